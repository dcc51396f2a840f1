"""Every server of a deployment, addressed one by one: what the runtime and `compound update` act on.

Behind the proxy a request reaches one replica of the proxy's choosing, so model control (loads,
rescales, unloads), statistics and the repository index go to each server directly, with the
deployment's key: every replica loads the same models with the same instance counts, and a
deployment's statistics are the sum of its servers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from toolkit.client import api_key_headers, load_models, model_config, repository_index, unload_model
from toolkit.observe.stats import ModelCounters, fetch_stats


@dataclass(frozen=True)
class ServerAddress:
    http_url: str
    grpc_url: str


@dataclass(frozen=True)
class ServerSet:
    servers: tuple[ServerAddress, ...]
    api_key: str

    @classmethod
    def of(cls, addresses: Sequence[tuple[str, str]], api_key: str) -> ServerSet:
        """From (http_url, grpc_url) pairs, the first being the one reads are taken from."""
        return cls(tuple(ServerAddress(http, grpc) for http, grpc in addresses), api_key)

    def only(self, index: int) -> ServerSet:
        """One of them, as a set (a restarted replica gets its state back alone)."""
        return ServerSet((self.servers[index],), self.api_key)

    @property
    def first(self) -> ServerAddress:
        return self.servers[0]

    def ready_models(self) -> set[str]:
        """Models READY on every server."""
        ready: Optional[set[str]] = None
        for server in self.servers:
            index = repository_index(server.http_url, api_key_headers(self.api_key))
            names = {str(entry.get("name")) for entry in index if entry.get("state") == "READY"}
            ready = names if ready is None else ready & names
        return ready or set()

    def config(self, name: str) -> dict[str, Any]:
        return model_config(self.first.http_url, name)

    def load(self, models: dict[str, Optional[dict[str, Any]]]) -> dict[str, Optional[str]]:
        """Load (or reload, rescale) on every server, one server after another so that the others
        keep serving; model -> None when it loaded everywhere, else the first server's error."""
        errors: dict[str, Optional[str]] = {name: None for name in models}
        for server in self.servers:
            for name, error in load_models(server.grpc_url, models, self.api_key).items():
                if error is not None and errors[name] is None:
                    errors[name] = error if len(self.servers) == 1 else f"{server.http_url}: {error}"
        return errors

    def unload(self, name: str) -> Optional[str]:
        error: Optional[str] = None
        for server in self.servers:
            failed = unload_model(server.grpc_url, name, self.api_key)
            error = error or failed
        return error

    def stats(self) -> dict[str, ModelCounters]:
        """Triton's counters per model, summed over the servers."""
        total: dict[str, ModelCounters] = {}
        for server in self.servers:
            for name, counters in fetch_stats(server.http_url).items():
                total[name] = total[name] + counters if name in total else counters
        return total
