"""Many questions to one server, a bounded number in flight: what `mcckd generate` and
`mcckd eval --endpoint` share.

Each answer and each question that failed for good is handed back on the calling thread as it
arrives, so the caller writes one line at a time and nothing interleaves. A question that fails
for good (`QuestionError`) is reported and the others go on. Any other failure stops the run:
no new question is sent, the requests waiting to retry give up, and the requests already being
answered are waited for and their answers handed back (they are paid for) before the failure
is raised.
"""
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from mcckd.teacher.client import Cancelled, QuestionError


def ask_all(client, items, ask, *, concurrency, on_answer, on_failure):
    """Run `ask(item)` for every item, at most `concurrency` at a time.

    Args:
        client: the `ServerClient` the requests go through (cancelled when the run stops).
        items: what to ask, in order.
        ask: item -> answer, run on a worker thread.
        concurrency: requests in flight at once.
        on_answer: (item, answer) -> None, called on this thread for each answer.
        on_failure: (item, reason) -> None, called on this thread for each question that
            failed for good.

    Raises:
        The first failure that stops the run (InputError, ServerError, ...), after the answers
        in flight have been handed back.
    """
    pending = iter(items)
    in_flight = {}
    stopping = None
    pool = ThreadPoolExecutor(max_workers=concurrency)

    def submit_next():
        item = next(pending, None) if stopping is None else None
        if item is not None:
            in_flight[pool.submit(ask, item)] = item

    try:
        for _ in range(concurrency):
            submit_next()
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                item = in_flight.pop(future)
                try:
                    answer = future.result()
                except QuestionError as error:
                    on_failure(item, str(error))
                except Cancelled:
                    pass  # the run is stopping; the question is asked again on the next run
                except Exception as error:  # kept, and raised once the answers in flight are in
                    if stopping is None:
                        stopping = error
                        client.cancel()
                else:
                    on_answer(item, answer)
                submit_next()
        if stopping is not None:
            raise stopping
    finally:
        client.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
