"""Run as a subprocess by the tests: POST the same signed body from several threads at once.

Usage: python -m tests.ingress.post_many URL BODY_FILE SIGNATURE THREADS START_AT
Prints one status code per line.
"""

from __future__ import annotations

import sys
import threading
import time

import httpx


def main() -> None:
    url, body_file, signature, threads, start_at = sys.argv[1:6]
    body = open(body_file, "rb").read()
    codes: list[int] = []
    lock = threading.Lock()

    def post() -> None:
        time.sleep(max(0.0, float(start_at) - time.time()))
        response = httpx.post(url, content=body, headers={"X-Zenthor-Signature": signature}, timeout=30)
        with lock:
            codes.append(response.status_code)

    workers = [threading.Thread(target=post) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sys.stdout.write("\n".join(str(code) for code in codes) + "\n")


if __name__ == "__main__":
    main()
