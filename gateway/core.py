"""One request through the pipeline: prefill (retried on another worker while nothing was
streamed), hand the KV to a decode worker (another one if a call fails before any output), relay
its stream; a stream whose decode worker is lost goes on from the tokens the client has (prefilled
with them, then decoded elsewhere). Both APIs (HTTP, gRPC) call this."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence, TypeVar

import grpc

from engine.config import ModelConfig
from engine.errors import InvalidRequestError
from engine.pooling import PoolingParams
from engine.prefix_cache import cache_namespace, check_salt
from engine.request import GenerationChunk, LoraRef, TokenOut, Usage, WorkRequest
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template, load_tokenizer, validate_prompt
from gateway import request_log
from gateway.admission import Aborted, Admission
from gateway.errors import OverloadedError, UnavailableError
from gateway.lora import LoraModules, ServedModel
from gateway.metrics import GatewayMetrics, RequestTrace
from gateway.reasoned import think_then_answer, thinks_first
from gateway.router import Router, Worker
from grove.internal.v1 import worker_pb2 as pb
from protocol import pipeline as convert

logger = logging.getLogger(__name__)
PREFILL_TIMEOUT_S = 120.0
MAX_REQUEST_ID = 256  # characters of a client's own request id
KV_LOSS_RETRIES = 1  # prefills again when a decode worker could not get the KV, before giving up
DECODE_MIGRATIONS = 2  # a request whose decode worker is lost mid-stream goes on elsewhere, this often
T = TypeVar("T")
# waits for room that the caller's own requests will make in the prefill workers: True once there
# is some, False where none will come (GatewayCore._prefill)
Room = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    model_dir: str
    served_model_name: str  # the model's id in responses (vLLM's first --served-model-name)
    max_model_len: int
    max_concurrent: int = 256  # requests in flight before 429
    # what a request leaves unset takes these (engine.generation_defaults: the model's generation config)
    sampling_defaults: Mapping[str, Any] = field(default_factory=dict)
    chat_template: str = ""  # the server's own chat template ("": the tokenizer's)
    trust_request_chat_template: bool = False  # a request may bring its own (vLLM's flag; else a 400)
    aliases: tuple[str, ...] = ()  # other names requests may give the model (vLLM's further --served-model-name)
    tool_parser: str | None = None  # the model's tool-call format, for tool_choice "auto" (gateway.tool_parsers)
    reasoning_parser: str | None = None  # how the model's thinking is told from its answer (gateway.reasoning_parsers)
    # vLLM's --default-chat-template-kwargs: template variables every chat gets unless it sets its own
    default_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    log_requests: bool = False  # vLLM's --enable-log-requests: each request's arrival and end in the log
    max_log_len: int | None = None  # prompt token ids a logged request shows (None: all)
    lora_modules: tuple[tuple[str, str], ...] = ()  # vLLM's --lora-modules: (name, path) of each adapter served
    max_lora_rank: int = 16  # vLLM's: adapters of a higher rank are refused
    runtime_lora_updating: bool = False  # /v1/load_lora_adapter and /v1/unload_lora_adapter answer (vLLM's switch)
    pooling: PoolingParams = PoolingParams()  # the embeddings API's (engine.pooling.model_pooling, --pooler-config)
    force_include_usage: bool = False  # vLLM's --enable-force-include-usage: every stream ends with its usage
    tokens_as_ids: bool = False  # vLLM's --return-tokens-as-token-ids: logprobs name tokens "token_id:<id>" by default
    dev_mode: bool = False  # vLLM's VLLM_SERVER_DEV_MODE: development endpoints (gateway.dev_routes)
    profiler: bool = False  # vLLM's VLLM_TORCH_PROFILER_DIR: /start_profile and /stop_profile (gateway.dev_routes)
    sleep_mode: bool = False  # vLLM's --enable-sleep-mode: /sleep and /wake_up, in dev mode (gateway.rl_routes)

    @property
    def served_names(self) -> tuple[str, ...]:
        return (self.served_model_name, *self.aliases)


class GatewayCore:
    def __init__(self, config: GatewayConfig, router: Router, metrics: GatewayMetrics) -> None:
        self.config = config
        self.router = router
        self.metrics = metrics
        self.tokenizer = load_tokenizer(config.model_dir)
        if config.chat_template:
            self.tokenizer.chat_template = config.chat_template
        self.model_config = ModelConfig.from_dir(config.model_dir)
        self.loras = LoraModules(config.served_names, config.max_lora_rank, config.runtime_lora_updating)
        for name, path in config.lora_modules:
            self.loras.add(name, path)
        self.admission = Admission(config.max_concurrent, metrics)  # capacity, pause, drain

    # ---- input ------------------------------------------------------------------------------
    def served(self, model: str | None) -> ServedModel:
        """What a request's ``model`` names: the base model (unnamed, or by a served name) or a LoRA
        adapter; any other name is a 404 (ModelNotFoundError)."""
        return self.loras.resolve(model)

    def token_ids(self, prompt: str | Sequence[int] | None = None, messages: list[dict[str, Any]] | None = None,
                  template: dict[str, Any] | None = None, add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids as a request would have them (chat template applied, with
        ``template``'s options; prompt text with the tokenizer's special tokens unless
        ``add_special_tokens`` is false), unchecked."""
        if messages is not None:
            if template and "chat_template" in template and not self.config.trust_request_chat_template:
                raise InvalidRequestError("chat_template", "a request's own chat template is refused here: "
                                                           "the server was not started with --trust-request-chat-template")
            options = dict(template or {})
            if self.config.default_template_kwargs:  # the server's defaults, under the request's own
                options["template_kwargs"] = {**self.config.default_template_kwargs, **options.get("template_kwargs", {})}
            return apply_chat_template(self.tokenizer, messages, **options)
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
        if prompt is not None:
            return list(prompt)
        raise InvalidRequestError("prompt", "is required")

    @property
    def max_model_len(self) -> int:
        """The context this deployment serves: the gateway's limit, or less where a worker's KV
        pool holds less (each worker reports its own in its stats)."""
        served = [w.stats.max_model_len for w in self.router.workers() if w.healthy and w.stats.max_model_len]
        return min([self.config.max_model_len, *served])

    def tokenize(self, prompt: str | Sequence[int] | None = None, messages: list[dict[str, Any]] | None = None,
                 template: dict[str, Any] | None = None, truncate: int | None = None,
                 add_special_tokens: bool = True) -> list[int]:
        """The prompt's checked token ids; ``truncate``: keep only its last so many (vLLM's
        ``truncate_prompt_tokens``; -1: as many as the context takes beside one output token)."""
        ids = self.token_ids(prompt, messages, template, add_special_tokens)
        if truncate is not None:
            limit = self.max_model_len - 1
            if not (truncate == -1 or 1 <= truncate <= limit):
                raise InvalidRequestError("truncate_prompt_tokens",
                                          f"must be -1 or in [1, {limit}] (the context length less one), got {truncate}")
            ids = ids[-(limit if truncate == -1 else truncate):]
        validate_prompt(ids, self.model_config.vocab_size, self.max_model_len)
        return ids

    def prediction(self, text: str) -> tuple[int, ...]:
        """A predicted output's token ids (OpenAI's Predicted Outputs), at most the context long."""
        ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) > self.max_model_len:
            raise InvalidRequestError("prediction", f"has {len(ids)} tokens, more than the context length "
                                                    f"({self.max_model_len})")
        return ids

    def check_room(self, prompt_tokens: int, max_tokens: int, field: str = "max_tokens") -> None:
        """A 400 when a limit the client set cannot fit beside its prompt (as vLLM and OpenAI answer;
        a default limit is cut to the context instead: generation stops there, "length")."""
        limit = self.max_model_len
        if prompt_tokens + max_tokens > limit:
            raise InvalidRequestError(field, f"is too large: {max_tokens}. The context length is {limit} tokens and "
                                             f"the prompt has {prompt_tokens}, which leaves {limit - prompt_tokens}")

    def thinks_first(self, prompt_ids: Sequence[int], params: SamplingParams) -> bool:
        """Whether a request thinks freely before its grammar applies (gateway.reasoned): under a
        grammar, with a reasoning parser, where the prompt leaves the thinking open."""
        return self.config.reasoning_parser is not None and params.structured is not None \
            and thinks_first(prompt_ids, self.detokenize)

    def detokenize(self, ids: Sequence[int]) -> str:
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError("tokens", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        return self.tokenizer.decode(list(ids))

    @staticmethod
    def new_request_id() -> str:
        return f"req-{uuid.uuid4().hex}"

    def request_ids(self, given: str, field: str = "request_id") -> tuple[str, str]:
        """(the id the client sees, the pipeline's id). A client's own id (``given``; "" for none)
        is the one it sees, on the response; the pipeline's begins with it (the workers' logs name
        it) and ends with a random suffix, so two requests sent with one id never clash in a worker."""
        if not given:
            request_id = self.new_request_id()
            return request_id, request_id
        if len(given) > MAX_REQUEST_ID or not given.isprintable():
            raise InvalidRequestError(field, f"must be at most {MAX_REQUEST_ID} printable characters")
        return given, f"{given}-{secrets.token_hex(4)}"

    def work(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "", priority: int = 0,
             cache_salt: str = "", lora: LoraRef | None = None) -> WorkRequest:
        check_salt(cache_salt)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        return WorkRequest(request_id or self.new_request_id(), tuple(prompt_ids), params, seed, priority, cache_salt,
                           lora=lora)

    # ---- the pipeline -----------------------------------------------------------------------
    async def _prefill(self, work: WorkRequest, trace: RequestTrace, avoid: Sequence[Worker] = (),
                       room: Room | None = None) -> tuple[Worker, pb.PrefillResponse]:
        """Prefills on a worker (another one while one fails), ``avoid``'s last unless it is all there is.
        Every worker at capacity: ``room()`` (the request's other choices, gateway.choices) waits for
        one of its own prefills to end and says True, to try again, or says False: a 429."""
        req = pb.PrefillRequest(request=convert.work_to_pb(work))
        return await self.on_prefill_worker(work, lambda w: w.prefill.Prefill(req, timeout=PREFILL_TIMEOUT_S),
                                            trace, avoid, room)

    async def on_prefill_worker(self, work: WorkRequest, call: Callable[[Worker], Awaitable[T]],
                                trace: RequestTrace | None = None, avoid: Sequence[Worker] = (),
                                room: Room | None = None) -> tuple[Worker, T]:
        """``call`` on the prefill worker routing picks for ``work`` (another one while one fails;
        see ``_prefill``): the worker and what the call returned."""
        tried: list[Worker] = []
        busy = False
        last_failure = ""
        # the workers' cache namespace (the salt, and the adapter: its KV is its own)
        namespace = cache_namespace(work.cache_salt, work.lora.digest if work.lora is not None else "")
        while True:
            w = self.router.choose_prefill(work.prompt_ids, exclude=[*tried, *avoid], cache_salt=namespace)
            if w is None and avoid:
                avoid = ()
                continue
            if w is None and busy and room is not None and await room():
                self.metrics.retry("prefill", last_failure)
                tried, busy = [], False
                continue
            if w is None:
                if busy:
                    raise OverloadedError("every prefill worker is at capacity; retry later")
                raise UnavailableError("no healthy prefill worker" + (" left after failures" if tried else ""))
            if tried:
                self.metrics.retry("prefill", last_failure)
            tried.append(w)
            w.in_flight += 1
            if trace is not None:
                trace.prefill_sent()
            try:
                return w, await call(w)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequestError(*_split_field(e.details())) from None
                if code == grpc.StatusCode.CANCELLED:
                    raise
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    busy = True
                elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # queued past the deadline behind other prompts: busy, not broken (a frozen or
                    # dead worker is found by the channel's keepalive and the health checks)
                    busy = True
                    logger.warning("prefill on %s took longer than %.0f s: trying another worker", w.address,
                                   PREFILL_TIMEOUT_S)
                else:  # died or stopped answering: nothing streamed yet, so try another worker
                    self.router.mark_failed(w)
                    logger.warning("prefill on %s failed (%s): retrying elsewhere", w.address, code.name)
                last_failure = code.name
            finally:
                w.in_flight -= 1

    async def generate(self, work: WorkRequest, arrived: float | None = None,
                       room: Room | None = None, thinks: bool = False) -> AsyncIterator[GenerationChunk]:
        """Streams the request's output; the last chunk has finish_reason and usage.

        ``arrived``: when the request reached the gateway (``time.perf_counter()``; default: now).
        ``room``: waits, when every prefill worker is at capacity, for room that the caller's own
        requests will make (see ``_prefill``). ``thinks``: a reasoning model's request under a
        grammar thinks freely first (gateway.reasoned).
        """
        await self.admission.enter()
        trace = RequestTrace(self.metrics, arrived)
        error: BaseException | None = None
        if self.config.log_requests:
            request_log.received(work, self.config.max_log_len, work.params)
        chunks = think_then_answer(lambda w, t: self._generate(w, t, room), work, trace) if thinks \
            else self._generate(work, trace, room)
        sent = 0  # tokens the client has
        aborted = False
        try:
            while (chunk := await self.admission.next_chunk(chunks)) is not None:
                sent += len(chunk.tokens)
                yield chunk
        except Aborted:  # a pause in mode abort: the request ends with what it had (vLLM's "abort")
            aborted = True
        except BaseException as e:
            error = e
            raise
        finally:
            await chunks.aclose()  # (a client gone mid-stream: the worker calls end and free their KV now)
            self.admission.leave()
            trace.ended(error)
            if self.config.log_requests:
                request_log.finished(work.request_id, trace.outcome(error))
        if aborted:
            yield GenerationChunk("", [], "abort", Usage(prompt_tokens=len(work.prompt_ids), completion_tokens=sent))

    async def _generate(self, work: WorkRequest, trace: RequestTrace,
                        room: Room | None) -> AsyncIterator[GenerationChunk]:
        pw, pre = await self._prefill(work, trace, room=room)
        trace.first_token(len(work.prompt_ids), pre.cached_tokens)
        usage = Usage(prompt_tokens=len(work.prompt_ids), completion_tokens=0, cached_tokens=pre.cached_tokens)
        prompt_lps = [convert.token_from_pb(t) for t in pre.prompt_logprobs] if work.params.prompt_logprobs is not None \
            else None
        output: list[int] = []  # every token the client has been sent
        lost = Usage()  # lookahead totals of decode workers lost mid-stream
        for migration in range(DECODE_MIGRATIONS + 1):
            if pre.finish_reason:
                first = convert.token_from_pb(pre.first_token)
                usage.completion_tokens += 1
                trace.finished(pre.finish_reason)
                yield GenerationChunk(pre.text, [first], pre.finish_reason, usage, prompt_lps,
                                      convert.stop_reason_from_pb(pre.stop_reason))
                return
            try:
                async for chunk in self._handed_over(work, pw, pre, prompt_lps, trace):
                    output.extend(t.token_id for t in chunk.tokens)
                    usage.completion_tokens += len(chunk.tokens)
                    if chunk.usage is not None:  # the decode worker's lookahead totals so far
                        usage.draft_tokens = lost.draft_tokens + chunk.usage.draft_tokens
                        usage.accepted_tokens = lost.accepted_tokens + chunk.usage.accepted_tokens
                    chunk.usage = None
                    if chunk.finish_reason is not None:
                        trace.finished(chunk.finish_reason)
                        chunk.usage = usage
                    yield chunk
                return
            except DecodeLostError as e:
                if migration == DECODE_MIGRATIONS:
                    raise UnavailableError(str(e)) from None
                # the request goes on elsewhere from the tokens the client has: prefilled with them
                # (their KV computed, the next token sampled at its position from the same seed,
                # so the output is what it would have been), then decoded by another worker
                logger.warning("%s: resuming %s after %d tokens", e, work.request_id, len(output))
                lost.draft_tokens, lost.accepted_tokens = usage.draft_tokens, usage.accepted_tokens
                self.metrics.retry("decode", e.code)
                self.metrics.migrations.inc()
                work = dataclasses.replace(work, params=dataclasses.replace(work.params, prompt_logprobs=None),
                                           resume_ids=tuple(output))
                prompt_lps = None
                pw, pre = await self._prefill(work, trace)

    async def _handed_over(self, work: WorkRequest, pw: Worker, pre: pb.PrefillResponse,
                           prompt_lps: list[TokenOut] | None, trace: RequestTrace) -> AsyncIterator[GenerationChunk]:
        """The prefill's token, then the decode worker's stream from the KV ``pw`` holds (prefilled
        again, if a decode worker could not get it); the KV is released if no decode worker took it."""
        first = convert.token_from_pb(pre.first_token)
        handed = False
        try:
            yield GenerationChunk(pre.text, [first], prompt_logprobs=prompt_lps)
            for attempt in range(KV_LOSS_RETRIES + 1):
                try:
                    async for chunk in self._decode(work, pre, first):
                        handed = True
                        trace.chunk(len(chunk.tokens))
                        yield chunk
                    return
                except KVLostError as e:
                    if attempt == KV_LOSS_RETRIES:
                        raise UnavailableError(str(e)) from None
                    # nothing decoded yet: the prompt is prefilled again (elsewhere if it can be);
                    # the same seed samples the same first token, which the client already has
                    logger.warning("%s: prefilling %s again", e, work.request_id)
                    self.metrics.retry("prefill", grpc.StatusCode.FAILED_PRECONDITION.name)
                    # the KV no decode worker could get: its holder frees it now (this gateway may
                    # reach it where the decode workers do not), not when its lease ends
                    detach(asyncio.ensure_future(_release_kv(pw, pre.kv.lease_id)))
                    pw, pre = await self._prefill(work, trace, avoid=[pw])
                    if pre.finish_reason or pre.first_token.token_id != first.token_id:
                        raise UnavailableError(f"{e}; prefilled again, the first token came out otherwise") from None
        finally:
            if not handed:  # the decode worker may never have taken the KV: free it on the prefill worker now
                # in a task of its own: when the client leaves, Starlette cancels every await of the
                # request's task (anyio's cancel scope), which would drop the release and leave the
                # KV held until its lease expires
                await asyncio.shield(detach(asyncio.ensure_future(_release_kv(pw, pre.kv.lease_id))))

    async def _decode(self, work: WorkRequest, pre: pb.PrefillResponse, first: TokenOut) -> AsyncIterator[GenerationChunk]:
        req = pb.DecodeRequest(request=convert.work_to_pb(work), first_token=pre.first_token, kv=pre.kv,
                               first_text=pre.text)
        tried: list[Worker] = []
        busy = False
        last_failure = ""
        while True:
            w = self.router.choose_decode(exclude=tried)
            if w is None:
                if busy:
                    raise OverloadedError("every decode worker is at capacity; retry later")
                raise UnavailableError("no healthy decode worker" + (" left after failures" if tried else ""))
            if tried:  # a call that failed before any output is retried: the KV is still held
                self.metrics.retry("decode", last_failure)
            tried.append(w)
            w.in_flight += 1
            call = w.decode.Decode(req)
            got_any = False
            try:
                async for chunk in call:
                    got_any = True
                    yield convert.decode_chunk_from_pb(chunk)
                return
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequestError(*_split_field(e.details())) from None
                if code == grpc.StatusCode.FAILED_PRECONDITION and not got_any:
                    raise KVLostError(f"decode worker {w.address}: {e.details()}") from None
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.router.mark_failed(w)
                if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) and not got_any:
                    # full, shutting down or gone before it sent anything: another decode worker
                    # takes the KV, still held (if this one took it after all, the next reports
                    # the KV lost and the prompt is prefilled again)
                    busy |= code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    last_failure = code.name
                    if code == grpc.StatusCode.UNAVAILABLE:
                        logger.warning("decode on %s failed before any output (%s): trying another", w.address,
                                       e.details())
                    continue
                if got_any and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                        grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    raise DecodeLostError(f"decode worker {w.address} failed mid-request: {code.name}: {e.details()}",
                                          code.name) from None
                raise UnavailableError(f"decode worker {w.address} failed mid-request: {code.name}: {e.details()}") from None
            finally:
                call.cancel()  # no-op when finished; frees the request everywhere when we leave early
                w.in_flight -= 1


_DETACHED: set[asyncio.Future[Any]] = set()


class DecodeLostError(UnavailableError):
    """The decode worker failed after it had streamed some output (died, stopped answering, cut
    off by its shutdown); ``code``: how the call ended."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class KVLostError(Exception):
    """A decode worker could not get the prompt's KV from its holder (the holder died, is out of
    reach, or its lease ended); nothing was decoded."""


def detach(task: asyncio.Future[T]) -> asyncio.Future[T]:
    """Holds ``task`` until it is done, whoever awaits it: asyncio keeps tasks only weakly, and a
    request's clean-up (a KV release, a cancelled choice ending) outlives the request's task."""
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)
    return task


async def _release_kv(worker: Worker, lease_id: str) -> None:
    try:
        await worker.prefill.ReleaseKV(pb.ReleaseKVRequest(lease_id=lease_id), timeout=2.0)
    except grpc.aio.AioRpcError:
        pass  # released already (the decode worker took it), or the lease expires anyway


def _split_field(details: str | None) -> tuple[str, str]:
    text = details or "invalid request"
    field, _, msg = text.partition(": ")
    return (field, msg) if msg else ("request", text)
