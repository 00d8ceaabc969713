"""Backend for any OpenAI-compatible chat completions server (the OpenAI API, vLLM, llama.cpp, ...).

* The API key is read only from the environment variable named by ``api_key_env`` (never from
  params or files), and only when a call must actually be made, so a run whose answers are all
  cached needs no key. ``api_key_env=None`` (or ``"none"``/``"null"``/``""``) means the server
  needs no key (a local server): a dummy key is sent; this requires ``base_url``.
* Retries are ours, not the client's (the client is built with ``max_retries=0``) so that they are
  visible and testable: 408/409/429, 5xx, timeouts and connection errors are retried up to
  ``max_retries`` times with exponential backoff ``retry_base_delay * 2**attempt`` (capped at
  ``retry_max_delay``, with jitter in [0.5, 1]x, and at least a server's ``Retry-After``).
  401/403 fail at once; any other 4xx fails at once. Errors are one line, name the env var and
  never contain the key (it is also scrubbed from server messages).
* Each sample is its own call with its own ``seed`` (:func:`sciexplain.generation.request_seed` of
  (seed, request id, sample index)): engines that honour seeds (vLLM, llama.cpp) give N different
  samples of a question, and the same ones again on a rerun.
* The cache key names the weights behind the served name: ``fingerprint`` (a hash of the local
  folder or file the server was started from, see :func:`sciexplain.generation.fingerprint`) joins
  the model name in :attr:`cache_id`, so a retrained adapter served under the same name is asked again.
* Up to ``max_concurrency`` calls run at once in a thread pool. ``generate(..., on_result=cb)``
  calls ``cb(index, result)`` on the calling thread as soon as each call finishes (this is how
  :func:`sciexplain.cache.generate_cached` caches per response), and the next call starts only after
  ``cb`` returned: at any moment at most ``max_concurrency`` calls are sent and not yet recorded, so a
  process killed at any point loses (and a rerun asks, and a paid API bills, again) at most that many
  (tests/test_faults.py). If one call fails for good, no new call is started, the calls in flight are
  finished (and reported), then the error is raised.
"""
from __future__ import annotations

import os
import random
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence

from .generation import GenRequest, GenResult, SamplingParams, request_seed
from .records import UserError

__all__ = ["OpenAIBackend", "BackendError", "NO_KEY_VALUES"]

NO_KEY_VALUES = (None, "", "none", "null")
_DUMMY_KEY = "sk-no-key-required"
_RETRY_STATUS = {408, 409, 429}
_ENV_NAME = __import__("re").compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class BackendError(UserError, RuntimeError):
    """A backend failed for good: the message is one line and says what to do."""


class _Fatal(Exception):
    pass


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 60,
        *,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        max_tokens_field: str = "max_tokens",
        fingerprint: str | None = None,
    ):
        if not model:
            raise BackendError("teacher model is empty: set the API model name (e.g. teacher.model)")
        if max_concurrency < 1 or max_retries < 0:
            raise BackendError(f"max_concurrency must be >= 1 and max_retries >= 0 (got {max_concurrency}, {max_retries})")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise BackendError(f"max_tokens_field must be 'max_tokens' or 'max_completion_tokens', not {max_tokens_field!r}")
        no_key = api_key_env is None or str(api_key_env).strip().lower() in NO_KEY_VALUES
        if no_key and not base_url:
            raise BackendError("api_key_env is none but base_url is not set: the OpenAI API needs a key; set teacher.base_url for a local server")
        self.model = model
        self.base_url = base_url
        if not no_key and not _ENV_NAME.match(str(api_key_env).strip()):
            # a key pasted where the variable's *name* belongs: say so without echoing it (params and dvc.lock
            # now hold a secret: the user must rotate it)
            raise BackendError("api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), but its "
                               "value looks like an API key itself (not shown); put the key in an environment variable, "
                               "set api_key_env to that variable's name, and rotate the key if params.yaml was shared")
        self.api_key_env = None if no_key else str(api_key_env).strip()
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.retry_base_delay = float(retry_base_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.max_tokens_field = max_tokens_field
        self.fingerprint = fingerprint or None
        self._client = None
        self._key: str | None = None
        self._client_lock = threading.Lock()

    @property
    def cache_id(self) -> str:
        """What names the model in the response cache: the served name and the weights' fingerprint."""
        return f"{self.model}@{self.fingerprint}" if self.fingerprint else self.model

    def request_seed(self, req: GenRequest, sampling: SamplingParams) -> int:
        return request_seed(sampling.seed, req.id, req.sample)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    # -- client ----------------------------------------------------------------------------------
    def _where(self) -> str:
        return self.base_url or "the OpenAI API"

    def _get_client(self):
        with self._client_lock:
            if self._client is None:
                if self.api_key_env is None:
                    key = _DUMMY_KEY
                else:
                    key = os.environ.get(self.api_key_env, "").strip()
                    if not key:
                        raise BackendError(
                            f"{self.api_key_env} is not set: export it, or set teacher.api_key_env "
                            "to the variable that holds the key (null for a local server that needs none)"
                        )
                import openai

                self._key = key
                self._client = openai.OpenAI(
                    api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout
                )
            return self._client

    def _scrub(self, text: str) -> str:
        text = " ".join(str(text).split())  # one line
        if self._key and self._key != _DUMMY_KEY:
            text = text.replace(self._key, "***")
        return text[:300]

    # -- one call ----------------------------------------------------------------------------------
    def _params(self, req: GenRequest, sampling: SamplingParams) -> dict:
        params = {
            "model": self.model,
            "messages": req.message_dicts(),
            self.max_tokens_field: int(sampling.max_new_tokens),
            "temperature": float(sampling.temperature),
            "top_p": float(sampling.top_p),
            "seed": self.request_seed(req, sampling),
        }
        if sampling.repetition_penalty != 1.0:
            # not an OpenAI API field: vLLM's server reads `repetition_penalty`, llama.cpp's `repeat_penalty`
            params["extra_body"] = {"repetition_penalty": float(sampling.repetition_penalty),
                                    "repeat_penalty": float(sampling.repetition_penalty)}
        return params

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.retry_max_delay, self.retry_base_delay * (2**attempt)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_delay))
        return delay

    def _call(self, req: GenRequest, sampling: SamplingParams, stop: threading.Event) -> GenResult | None:
        import openai

        client = self._get_client()
        params = self._params(req, sampling)
        last = ""
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                return None
            retry_after = None
            try:
                try:
                    resp = client.chat.completions.create(**params)
                except ValueError as e:  # a 200 whose body is not JSON
                    raise _Fatal(f"{self._where()} sent a reply that is not JSON for request {req.id!r} "
                                 f"({self._scrub(e)}): is base_url an OpenAI-compatible /v1 endpoint?") from None
                return self._to_result(req, resp)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                what = "rejected the API key" if self.api_key_env else "requires an API key"
                raise _Fatal(
                    f"{self._where()} {what} (HTTP {e.status_code}): check {self.api_key_env or 'teacher.api_key_env'}"
                    f" and that it has access to model {self.model!r}"
                ) from None
            except openai.APITimeoutError:
                last = f"timed out after {self.timeout:g}s"
            except openai.APIConnectionError as e:
                last = f"connection error ({self._scrub(e.__cause__ or e)})"
            except openai.APIStatusError as e:
                msg = self._scrub(getattr(e, "message", "") or e)
                if e.status_code in _RETRY_STATUS or e.status_code >= 500:
                    last = f"HTTP {e.status_code}: {msg}"
                    retry_after = _retry_after(e.response)
                else:
                    raise _Fatal(f"{self._where()} refused request {req.id!r} (HTTP {e.status_code}): {msg}") from None
            except openai.OpenAIError as e:  # e.g. a malformed 200 response
                raise _Fatal(f"{self._where()} failed on request {req.id!r}: {self._scrub(e)}") from None
            if attempt < self.max_retries:
                if stop.wait(self._backoff(attempt, retry_after)):
                    return None
        raise _Fatal(
            f"{self._where()} failed on request {req.id!r} after {self.max_retries + 1} attempts: last error {last}"
        )

    def _to_result(self, req: GenRequest, resp) -> GenResult:
        """The result of one reply; a reply that is not a chat completion is one clear error, never a traceback."""
        def bad(what: str) -> _Fatal:
            return _Fatal(f"{self._where()} sent a malformed reply for request {req.id!r}: {what}")

        choices = getattr(resp, "choices", None)
        if not choices:
            raise _Fatal(f"{self._where()} returned no choices for request {req.id!r}")
        if not isinstance(choices, list):
            raise bad(f"'choices' is {type(choices).__name__}, not a list")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise bad("choices[0] has no 'message'")
        content = getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            raise bad(f"choices[0].message.content is {type(content).__name__}, not a string")
        usage = getattr(resp, "usage", None)
        try:
            prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        except (TypeError, ValueError):
            raise bad("'usage' token counts are not integers") from None
        finish = getattr(choice, "finish_reason", None)
        return GenResult(
            id=req.id,
            sample=req.sample,
            text=content or "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finished=finish == "stop",
            extra={"finish_reason": finish},
        )

    # -- many calls --------------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenRequest],
        sampling: SamplingParams,
        *,
        on_result: Callable[[int, GenResult], None] | None = None,
    ) -> list[GenResult]:
        requests = list(requests)
        if not requests:
            return []
        self._get_client()  # a missing key fails here, once, before any thread starts
        results: list[GenResult | None] = [None] * len(requests)
        stop = threading.Event()
        error: BaseException | None = None
        width = min(self.max_concurrency, len(requests))
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="openai")
        queue = iter(enumerate(requests))
        futures: dict[Future, int] = {}
        todo: set[Future] = set()

        def start_next() -> None:
            # At most `width` calls are sent and not yet reported: a call is started only when another one has been
            # handed to on_result (i.e. cached). A crash therefore loses at most max_concurrency answered calls.
            if stop.is_set():
                return
            nxt = next(queue, None)
            if nxt is not None:
                fut = pool.submit(self._call, nxt[1], sampling, stop)
                futures[fut] = nxt[0]
                todo.add(fut)

        try:
            for _ in range(width):
                start_next()
            while todo:
                done, _ = wait(todo, return_when=FIRST_COMPLETED)
                for fut in done:
                    todo.discard(fut)
                    exc = fut.exception()
                    if exc is not None:
                        if error is None:
                            error = exc
                            stop.set()  # start nothing new; calls in flight still finish and are reported
                        continue
                    res = fut.result()
                    if res is None:
                        continue  # skipped because of an earlier error
                    i = futures[fut]
                    results[i] = res
                    if on_result is not None:  # also after an error: a finished call is never thrown away
                        on_result(i, res)
                    start_next()  # this call's slot is free only now that it is recorded
        except BaseException:  # e.g. Ctrl-C or a failing on_result: stop at once, drop what is in flight
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if error is not None:
            if isinstance(error, _Fatal):
                raise BackendError(str(error)) from None
            raise error
        return results  # type: ignore[return-value]


def _retry_after(response) -> float | None:
    if response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None
