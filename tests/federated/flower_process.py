"""One side of a federated deployment on loopback, run as its own process by test_flower.py.

    python flower_process.py server ADDRESS STATE_DIR ROUNDS MIN_SITES
    python flower_process.py site ADDRESS NAME SLOW_ROUND [val]   (sleeps 20 s in that round's local training;
                                                                    val: the site has validation samples)

The server writes STATE_DIR/result.json: its round record, the sites' metrics, the temperatures they sent and the
final global weights.
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyLogistic, make_site  # noqa: E402

from healthfusion.federated.client import Site  # noqa: E402
from healthfusion.federated.flower import connect, serve  # noqa: E402
from healthfusion.federated.server import FederatedConfig  # noqa: E402
from healthfusion.training import TrainerConfig  # noqa: E402

LOCAL = TrainerConfig(max_epochs=1, batch_size=16, lr=0.05)
SITES = {"a": (60, 0.0, 1), "b": (40, 0.5, 2), "c": (30, -0.5, 3)}


class SlowSite(Site):
    slow_round = -1

    def fit(self, *args, round_=0, **kwargs):
        if round_ == self.slow_round:
            print(f"site {self.name} slow in round {round_}", flush=True)
            time.sleep(20)
        return super().fit(*args, round_=round_, **kwargs)


def main(argv):
    torch.manual_seed(0)
    model = TinyLogistic()
    role, address = argv[0], argv[1]
    if role == "server":
        state_dir, rounds, min_sites = Path(argv[2]), int(argv[3]), int(argv[4])
        config = FederatedConfig(rounds=rounds, min_sites=min_sites, start_sites=3, round_timeout=60)
        server, metrics, temperatures = serve(address, model, config, state_dir)
        (state_dir / "result.json").write_text(json.dumps({
            "rounds": server.rounds, "site_metrics": metrics, "temperatures": temperatures,
            "weights": [w.tolist() for w in server.weights]}))
    else:
        name, slow_round = argv[2], int(argv[3])
        plain = make_site(name, *SITES[name], val=argv[4:] == ["val"])
        site = SlowSite(plain.name, plain.train, plain.test, plain.val)
        site.slow_round = slow_round
        connect(address, model, site, LOCAL, FederatedConfig(), max_wait=60)


if __name__ == "__main__":
    main(sys.argv[1:])
