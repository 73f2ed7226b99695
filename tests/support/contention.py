"""A contention worker process: N threads race to claim and complete the same jobs.

Run as ``python -m tests.support.contention NAME THREADS TOTAL`` (it stops once TOTAL jobs are done). Each thread repeatedly picks heads of
line and other open jobs at random, claims, records that it holds
the job (and in collect mode the jobs merged into it) in ``contention_probe`` while "working", and
completes with an assistant message. A sampler in the test process reads ``contention_probe`` and
``agent_job`` all along.
"""

from __future__ import annotations

import random
import sys
import threading
import time

from zenthor.db import database, execute, init_database
from zenthor.models import Message
from zenthor.queue import Lease, LeaseLost, claim, complete

# Half heads of line (both processes aim at the same jobs), half any open job (claims must refuse
# the ones behind an older job of their conversation).
_CANDIDATES = """
(SELECT id FROM (
    SELECT DISTINCT ON (conversation_id) id FROM agent_job
     WHERE status IN ('pending', 'processing') ORDER BY conversation_id, id
 ) AS heads ORDER BY random() LIMIT 4)
UNION ALL
(SELECT id FROM agent_job WHERE status IN ('pending', 'processing') ORDER BY random() LIMIT 4)
"""


def work(name: str, stop: threading.Event, total: int) -> None:
    with database.connection_context():
        while not stop.is_set():
            heads = [row[0] for row in execute(_CANDIDATES)]
            if not heads:
                # Done once every job the test will enqueue exists and is done (the test may still
                # be enqueuing while the workers run).
                if execute("SELECT count(*) FROM agent_job WHERE status = 'done'")[0][0] >= total:
                    return
                time.sleep(0.01)
                continue
            for job_id in heads:
                lease = claim(job_id, name)
                if not isinstance(lease, Lease):
                    continue
                # Every job the lease holds: in collect mode, the ones merged into it too.
                for held_id in (lease.job_id, *lease.merged_job_ids):
                    execute(
                        "INSERT INTO contention_probe (job_id, conversation_id, token) VALUES (%s, %s, %s)",
                        (held_id, lease.conversation_id, lease.token),
                    )
                time.sleep(random.uniform(0, 0.002))
                execute("DELETE FROM contention_probe WHERE token = %s", (lease.token,))
                try:
                    complete(
                        lease,
                        write=lambda held: Message.create(
                            conversation=held.conversation_id,
                            role="assistant",
                            content=f"job {held.job_id}",
                            job_id=held.job_id,
                        ),
                    )
                except LeaseLost:
                    pass


def main() -> None:
    name, threads, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    init_database(pool_size=threads + 2)
    stop = threading.Event()
    workers = [threading.Thread(target=work, args=(f"{name}-t{i}", stop, total)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    stop.set()


if __name__ == "__main__":
    main()
