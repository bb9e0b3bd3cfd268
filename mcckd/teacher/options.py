"""The command-line options of a run against a server (`mcckd generate --endpoint`, `mcckd eval
--endpoint`), the client they describe, and the sidecar file of questions that failed for good."""
import os
from pathlib import Path

from mcckd.arguments import non_negative_float, non_negative_int, positive_int
from mcckd.teacher.client import DEFAULT_MAX_RETRY_AFTER


def add_server_arguments(group):
    """Concurrency, key, retries, timeouts and failure handling, into an argparse group."""
    group.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="environment variable that holds the API key (sent as a Bearer token)")
    group.add_argument("--max-retries", type=non_negative_int, default=8, help="retries of one request")
    group.add_argument("--retry-delay", type=non_negative_float, default=1.0,
                       help="seconds before the first retry; doubles each time, with jitter")
    group.add_argument("--max-retry-after", type=non_negative_float, default=DEFAULT_MAX_RETRY_AFTER,
                       help="longest wait in seconds that a server's Retry-After header can impose")
    group.add_argument("--timeout", type=non_negative_float, default=600.0,
                       help="seconds to wait for a response (0: no limit)")
    group.add_argument("--retry-failed", action="store_true",
                       help="ask again the questions an earlier run recorded as failed for good")


def make_client(args, client_class):
    """The `client_class` client the command line describes; the key comes from the environment."""
    return client_class(
        args.endpoint, args.model, api_key=os.environ.get(args.api_key_env), timeout=args.timeout or None,
        max_retries=args.max_retries, retry_delay=args.retry_delay, max_retry_after=args.max_retry_after,
    )


def failures_path(out):
    """The sidecar file of the questions of output file `out` that failed for good: its stem +
    `.failures.jsonl`, one `{"id", "reason"}` a line."""
    out = Path(out)
    return out.with_name(out.stem + ".failures.jsonl")
