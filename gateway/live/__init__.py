"""The live engine of docs/design.md §6: entries fanned out to SSE clients, none lost, in bounded memory.

One :class:`~gateway.live.hub.Hub` per gateway process owns everything here: a blocking reader per
partition (``reader``), a ring of recent frames per watched job (``ring``), pages kept for clients
behind a ring (``pages``), and every subscriber (``subscriber``), each writing through its
:class:`~gateway.live.sse_response.SSEResponse`. Nothing here imports ``gateway.api``.
"""
