"""The Flower adapter: the only module of healthfusion that imports ``flwr`` (extra ``federated``).

Two ways to run the same strategy (:class:`~healthfusion.federated.server.FederatedServer` aggregates in both):

* **simulation** on one machine: :func:`simulate` runs every site as a Flower virtual client (Flower's Ray-based
  simulation engine, ``flwr.simulation.start_simulation``);
* **deployment**: :func:`serve` starts the server on ``host:port`` and :func:`connect` runs one site's client in
  its own process (a hospital runs only its client, on its own data), over Flower's gRPC transport
  (``flwr.server.start_server`` / ``flwr.client.start_client``; deprecated by Flower in favour of SuperLink /
  SuperNode but still shipped by flwr 1.41 and the simplest way to run one server and N sites as plain processes).

Calibration: with the evaluation of the final global model each site sends its temperature fitted on its own
validation stays and their number (``temperature``, ``n_val`` in the evaluate metrics); the server averages them
with :func:`~healthfusion.federated.calibration.combine_temperatures`, as the in-process simulation does.

Faults: a site that crashes, disconnects or exceeds ``round_timeout`` is a failure of that round; the round is
aggregated from the others when at least ``min_sites`` returned (Flower's ``accept_failures``). The server waits
for ``min_sites`` sites before each round. With a state folder, a restarted server resumes after the last
completed round.

Example (three terminals)::

    healthfusion federate --config FL.yaml --role server --address 127.0.0.1:8080
    healthfusion federate --config FL.yaml --role site --site cleveland --address 127.0.0.1:8080
    healthfusion federate --config FL.yaml --role site --site hungary --address 127.0.0.1:8080
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from healthfusion.federated.calibration import site_temperature
from healthfusion.federated.client import Site, get_weights, set_weights
from healthfusion.federated.server import FederatedConfig, FederatedServer
from healthfusion.optional import require
from healthfusion.training import TrainerConfig

log = logging.getLogger(__name__)


def _flwr():
    flwr = require("flwr", extra="federated", needed_for="Federated training")
    common = require("flwr.common", extra="federated", needed_for="Federated training")
    strategy = require("flwr.server.strategy", extra="federated", needed_for="Federated training")
    return flwr, common, strategy.Strategy


def make_client(model: nn.Module, site: Site, local: TrainerConfig, config: FederatedConfig,
                head_kind: str = "binary"):
    """A Flower ``Client`` running ``site``'s local rounds on ``model`` (the same architecture as the server's)."""
    flwr, common, _ = _flwr()

    class SiteClient(flwr.client.NumPyClient):
        def get_parameters(self, config):
            return get_weights(model)

        def fit(self, parameters, config):
            round_ = int(config.get("round", 0))
            if fed.privacy is not None and not site.privacy_started:  # a (re)started site process
                site.reset_privacy(int(json.loads(str(config.get("dp_steps", "{}"))).get(site.name, 0)))
            weights, n, info = site.fit(model, parameters, local.model_copy(update={"seed": config_seed}),
                                        round_=round_, head_kind=head_kind, proximal_mu=fed.proximal_mu,
                                        privacy=fed.privacy, budget_epochs=fed.rounds * local.max_epochs)
            return weights, n, {"site": site.name, **info}

        def evaluate(self, parameters, config):
            set_weights(model, parameters)
            sent = {"site": site.name}
            if config.get("calibrate"):  # the final global model: the site's temperature on its validation stays
                fit = site_temperature(model, site, head_kind)
                sent.update({"n_val": 0} if fit is None else {"temperature": fit[0], "n_val": fit[1]})
            if site.test is None:
                return 0.0, 0, sent
            metrics = site.evaluate(model, "test", head_kind)
            return float(metrics.pop("loss", 0.0)), int(metrics["n"]), {**sent, **metrics}

    fed, config_seed = config, config.seed
    return SiteClient().to_client()


def make_strategy(server: FederatedServer, offset: int = 0, on_round: Callable | None = None):
    """A Flower legacy ``Strategy`` delegating aggregation and bookkeeping to ``server``.

    ``offset`` is the number of rounds completed before this server process started (resume): Flower counts its
    rounds from 1 again, the record continues at ``offset + 1``.
    """
    _, common, Strategy = _flwr()
    cfg = server.config

    class HealthfusionStrategy(Strategy):
        def __init__(self):
            super().__init__()
            self.site_metrics: list[dict[str, Any]] = []
            self.temperatures: dict[str, tuple[float, int] | None] = {}  # what each site sent after the last round

        def initialize_parameters(self, client_manager):
            return common.ndarrays_to_parameters(server.weights)

        def configure_fit(self, server_round, parameters, client_manager):
            wanted = cfg.start_sites if server_round == 1 and cfg.start_sites else cfg.min_sites
            client_manager.wait_for(max(wanted, cfg.min_sites))
            clients = client_manager.sample(num_clients=client_manager.num_available(), min_num_clients=cfg.min_sites)
            spent = {name: server.dp_steps(name) for r in server.rounds for name in (r.get("dp_steps") or {})}
            ins = common.FitIns(parameters, {"round": offset + server_round, "dp_steps": json.dumps(spent)})
            return [(c, ins) for c in clients]

        def aggregate_fit(self, server_round, results, failures):
            round_ = offset + server_round
            rows = []
            for _, res in results:
                metrics = dict(res.metrics)
                name = str(metrics.pop("site", "unknown"))
                rows.append((name, common.parameters_to_ndarrays(res.parameters), int(res.num_examples), metrics))
            failed = [(_failure_name(f, i), _failure_reason(f)) for i, f in enumerate(failures)]
            server.aggregate(round_, rows, failed)
            if on_round is not None:
                on_round(round_, server.rounds[-1])
            return common.ndarrays_to_parameters(server.weights), {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            clients = client_manager.sample(num_clients=client_manager.num_available(), min_num_clients=1)
            last = offset + server_round == cfg.rounds  # the final global model: ask for the sites' temperatures
            return [(c, common.EvaluateIns(parameters, {"calibrate": int(last)})) for c in clients]

        def aggregate_evaluate(self, server_round, results, failures):
            n = sum(r.num_examples for _, r in results)
            for _, r in results:
                metrics = dict(r.metrics)
                if "n_val" in metrics:
                    count, temperature = int(metrics.pop("n_val")), metrics.pop("temperature", None)
                    self.temperatures[str(metrics.get("site", "unknown"))] = (
                        None if temperature is None else (float(temperature), count))
                if r.num_examples:
                    self.site_metrics.append({"round": offset + server_round, "site": metrics.pop("site", "unknown"),
                                              "model": "global", **metrics})
            loss = sum(r.loss * r.num_examples for _, r in results) / n if n else None
            return loss, {}

        def evaluate(self, server_round, parameters):
            return None

    return HealthfusionStrategy()


def _failure_name(failure, i: int) -> str:
    """A failed site's name: Flower reports a lost connection as a bare exception, without the client."""
    if isinstance(failure, tuple):
        return f"client {getattr(failure[0], 'cid', i + 1)}"
    return f"unidentified site {i + 1}"


def _failure_reason(failure) -> str:
    err = failure if isinstance(failure, BaseException) else failure[1] if isinstance(failure, tuple) else failure
    return f"{type(err).__name__}: {err}"


def serve(address: str, model: nn.Module, config: FederatedConfig, state_dir=None, on_round=None):
    """Run the Flower server on ``address`` (``host:port``) until ``config.rounds`` rounds are complete.

    Returns ``(server, site_metrics, temperatures)``: the :class:`FederatedServer` (final weights, round record),
    the per-round, per-site test metrics the sites reported, and what each site sent with its evaluation of the
    final global model: site name -> ``(T, n_val)``, its calibration temperature on its validation stays, or None
    (no usable validation stays); :func:`~healthfusion.federated.calibration.combine_temperatures` turns them into
    the model's calibrator, as in the simulation. With ``state_dir`` the state is saved after each round and a
    restarted server continues after the last completed one (returning at once, with no temperatures, if all are
    done).
    """
    flwr, _, _ = _flwr()
    server = FederatedServer(config, get_weights(model), state_dir)
    server.resume()
    remaining = config.rounds - server.round
    strategy = make_strategy(server, offset=server.round, on_round=on_round)
    if remaining > 0:
        flwr.server.start_server(
            server_address=address,
            config=flwr.server.ServerConfig(num_rounds=remaining, round_timeout=config.round_timeout),
            strategy=strategy,
        )
    set_weights(model, server.weights)
    return server, strategy.site_metrics, strategy.temperatures


def connect(address: str, model: nn.Module, site: Site, local: TrainerConfig, config: FederatedConfig,
            head_kind: str = "binary", max_wait: float = 60.0) -> None:
    """Run ``site``'s Flower client against the server at ``address`` until the server ends the run.

    Retries the connection for up to ``max_wait`` seconds (the server may start later).
    """
    flwr, _, _ = _flwr()
    flwr.client.start_client(server_address=address, client=make_client(model, site, local, config, head_kind),
                             insecure=True, max_wait_time=max_wait)


def simulate(model_fn: Callable[[], nn.Module], sites: Sequence[Site], config: FederatedConfig,
             local: TrainerConfig, head_kind: str = "binary", num_cpus: int = 2):
    """Flower's simulation engine: every site a virtual client on this machine (Ray, ``num_cpus`` CPUs).

    ``model_fn()`` builds a fresh model of the run's architecture (seeded, so every call gives the same initial
    weights). Returns ``(server, site_metrics)`` as :func:`serve`.
    """
    flwr, _, _ = _flwr()
    from flwr.simulation import start_simulation

    model = model_fn()
    server = FederatedServer(config, get_weights(model))

    def client_fn(context):
        site = sites[int(context.node_config["partition-id"])]
        return make_client(model_fn(), site, local, config, head_kind)

    strategy = make_strategy(server)
    ray = require("ray", extra="federated", needed_for="Flower's simulation engine")
    running = ray.is_initialized()  # Flower's engine starts Ray and leaves it running; stop what it started
    try:
        start_simulation(client_fn=client_fn, num_clients=len(sites), config=flwr.server.ServerConfig(
            num_rounds=config.rounds, round_timeout=config.round_timeout), strategy=strategy,
            client_resources={"num_cpus": 1}, keep_initialised=running,
            ray_init_args={"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": False,
                           "ignore_reinit_error": True})
    finally:
        if not running and ray.is_initialized():
            ray.shutdown()
    set_weights(model, server.weights)
    return server, strategy.site_metrics, strategy.temperatures
