"""The server's Prometheus metrics (``GET /metrics``), kept in a registry of the app's own.

Names follow vLLM's and llama.cpp's servers where they fit, with the ``influence:`` prefix; every series is
labelled with the model id. Counters and histograms are fed as each request ends on the engine
(:meth:`EngineRunner.add_observer`, through :meth:`ServerMetrics.watch`); gauges are read from the runners when
Prometheus scrapes:

=============================================== ==========================================================
``influence:requests_running``                  requests generating now (vLLM ``num_requests_running``)
``influence:requests_waiting``                  requests queued for a place in the batch
``influence:prompt_tokens_total``               prompt tokens of finished requests, cached ones included
``influence:generation_tokens_total``           tokens generated
``influence:request_success_total``             requests ended, by ``finished_reason`` (stop, length, abort)
``influence:time_to_first_token_seconds``       histogram: from the engine starting a request to its first token
``influence:e2e_request_latency_seconds``       histogram: from the engine starting a request to its end
``influence:decode_tokens_per_second``          tokens per second of the last decode step, whole batch (0: idle)
``influence:prompt_cache_hits_total``           requests that found part of their prompt in the prompt cache
``influence:prompt_cache_hit_tokens_total``     prompt tokens found there (not prefilled again)
``influence:prompt_cache_usage_bytes``          bytes of KV caches the prompt cache keeps (and ``_max_bytes``)
``influence:prompt_cache_entries``              sequences it keeps
``influence:models_loaded``                     models in memory
=============================================== ==========================================================

A process-wide default registry would collide as soon as two apps live in one process (the tests build many),
so each :class:`ServerMetrics` has its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from influence_tui.core.engine.runner import EngineRunner
    from influence_tui.core.types import GenerationStats
    from influence_tui.server.state import ServerState

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
_REASONS = {"cancelled": "abort"}
"""The engine's finish reasons as the answers spell them (the server ends a request only when shutting down)."""


class _LiveGauges(Collector):
    """The gauges read at scrape time from the runners that have a model loaded."""

    def __init__(self, runners: Callable[[], Mapping[str, EngineRunner]]) -> None:
        self._runners = runners

    def collect(self) -> Iterator[Metric]:
        families = {
            "requests_running": GaugeMetricFamily(
                "influence:requests_running", "Requests generating now.", labels=["model"]
            ),
            "requests_waiting": GaugeMetricFamily(
                "influence:requests_waiting", "Requests waiting for a place in the batch.", labels=["model"]
            ),
            "tokens_per_s": GaugeMetricFamily(
                "influence:decode_tokens_per_second",
                "Tokens per second of the last decode step, all requests of the batch together (0 when idle).",
                labels=["model"],
            ),
            "cache_bytes": GaugeMetricFamily(
                "influence:prompt_cache_usage_bytes", "Bytes of KV caches the prompt cache keeps.", labels=["model"]
            ),
            "cache_max": GaugeMetricFamily(
                "influence:prompt_cache_max_bytes", "The prompt cache's bound in bytes.", labels=["model"]
            ),
            "cache_entries": GaugeMetricFamily(
                "influence:prompt_cache_entries", "Sequences the prompt cache keeps.", labels=["model"]
            ),
        }
        runners = self._runners()
        for model, runner in runners.items():
            load = runner.load_report()
            cache = runner.prompt_cache_report()
            families["requests_running"].add_metric([model], load["running"])
            families["requests_waiting"].add_metric([model], load["waiting"])
            families["tokens_per_s"].add_metric([model], runner.step_rate())
            families["cache_bytes"].add_metric([model], cache["bytes"])
            families["cache_max"].add_metric([model], cache["max_bytes"])
            families["cache_entries"].add_metric([model], cache["entries"])
        yield from families.values()
        yield GaugeMetricFamily("influence:models_loaded", "Models in memory.", value=len(runners))


class ServerMetrics:
    """One app's metrics. ``runners`` returns the runners with a model loaded, by model id (the app's one
    runner, or a pool's); call :meth:`watch` once for each runner so its finished requests are counted."""

    def __init__(self, runners: Callable[[], Mapping[str, EngineRunner]]) -> None:
        self.registry = CollectorRegistry()
        model = ["model"]
        self.prompt_tokens = Counter(
            "influence:prompt_tokens", "Prompt tokens of finished requests.", model, registry=self.registry
        )
        self.generation_tokens = Counter(
            "influence:generation_tokens", "Tokens generated.", model, registry=self.registry
        )
        self.requests = Counter(
            "influence:request_success",
            "Requests ended, by finish reason.",
            ["model", "finished_reason"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "influence:prompt_cache_hits",
            "Requests that found part of their prompt in the prompt cache.",
            model,
            registry=self.registry,
        )
        self.cache_hit_tokens = Counter(
            "influence:prompt_cache_hit_tokens",
            "Prompt tokens found in the prompt cache (not prefilled again).",
            model,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "influence:time_to_first_token_seconds",
            "Seconds from the engine starting a request to its first token.",
            model,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "influence:e2e_request_latency_seconds",
            "Seconds from the engine starting a request to its end.",
            model,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveGauges(runners))
        self._watched: set[int] = set()

    def watch(self, runner: EngineRunner, model: str | Callable[[], str]) -> None:
        """Count the requests ``runner`` finishes under ``model`` (an id, or a function giving the id of the
        model it holds when the request ends); a runner watched already is not counted twice."""
        if id(runner) in self._watched:
            return
        self._watched.add(id(runner))
        name = model if callable(model) else (lambda: model)
        runner.add_observer(lambda stats: self.observe(name(), stats))

    def observe(self, model: str, stats: GenerationStats) -> None:
        """One finished request (called on the engine thread: counters only, nothing that blocks)."""
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        self.generation_tokens.labels(model).inc(stats.generated_tokens)
        self.requests.labels(model, _REASONS.get(stats.finish_reason, stats.finish_reason)).inc()
        if stats.cached_prompt_tokens > 0:
            self.cache_hits.labels(model).inc()
            self.cache_hit_tokens.labels(model).inc(stats.cached_prompt_tokens)
        if stats.generated_tokens > 0:
            self.time_to_first_token.labels(model).observe(stats.time_to_first_token_s)
        if stats.total_s > 0:
            self.request_latency.labels(model).observe(stats.total_s)

    def render(self) -> bytes:
        """The text Prometheus scrapes (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def metrics_for(state: ServerState) -> ServerMetrics:
    """The metrics of an app's state: every model of its pool (each runner watched as the pool makes it), or
    its one runner where there is no pool."""
    pool: Any = getattr(state, "pool", None)
    if pool is not None and hasattr(pool, "add_runner_hook"):

        def pooled() -> dict[str, EngineRunner]:
            return {entry.model_id: entry.runner for entry in pool.entries() if entry.runner.info is not None}

        metrics = ServerMetrics(pooled)
        pool.add_runner_hook(lambda entry: metrics.watch(entry.runner, entry.model_id))
        return metrics

    def single() -> dict[str, EngineRunner]:
        return {state.model_id: state.runner} if state.runner.info is not None else {}

    metrics = ServerMetrics(single)
    metrics.watch(state.runner, lambda: state.model_id)
    return metrics
