"""Publishing from multiprocessing.Pool workers: python examples/pool_workers.py [REDIS_URL]"""

import sys
from multiprocessing import Pool

from broker import SyncPublisher

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
pub = SyncPublisher(URL)  # a worker process starts its own afresh (new src, empty buffer)


def convert(item: int) -> int:
    pub.job("batch-7").step("convert").worker(f"item-{item}").info("converted", item=item)
    pub.flush()  # stored before the result is used
    return item * 2


if __name__ == "__main__":
    pool = Pool(4)
    results = pool.map(convert, range(8))
    pool.close()  # close() + join(): the workers end and deliver what they hold;
    pool.join()  # terminate(), what `with Pool() as pool:` does at its end, kills them first
    pub.job("batch-7").end("completed", converted=len(results))
    print(f"{len(results)} tasks, end stored: {pub.close().ok}")
