"""Run as a subprocess by the tests: POST the same signed body from several threads at once.

Usage: python -m tests.ingress.post_many URL BODY_FILE HEADERS_JSON THREADS START_AT
(HEADERS_JSON: the signing headers, from tests.ingress.helpers.sign_headers).
Prints one status code per line.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def main() -> None:
    url, body_file, headers_json, threads, start_at = sys.argv[1:6]
    headers = json.loads(headers_json)
    body = open(body_file, "rb").read()
    codes: list[int] = []
    lock = threading.Lock()

    def post() -> None:
        time.sleep(max(0.0, float(start_at) - time.time()))
        response = httpx.post(url, content=body, headers=headers, timeout=30)
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
