"""healthfusion federate: simulation on a synthetic multi-site cohort, the global model scored by predict, errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app

runner = CliRunner()


def write_config(tmp_path, modalities=("static",), **federated):
    config = {
        "name": "fl", "out": str(tmp_path / "run"),
        "data": {"source": "synthetic", "path": str(tmp_path / "cohort"), "label": "mortality",
                 "options": {"n_stays": 240, "seed": 1}},
        "features": {"modalities": list(modalities)},
        "model": {"hidden": 8},
        "training": {"max_epochs": 1, "batch_size": 32, "lr": 0.01},
        "federated": {"rounds": 2, "compare_epochs": 2, "min_sites": 2, **federated},
        "n_boot": 50,
    }
    path = tmp_path / "FL.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_federate_simulation_writes_run_and_predict_loads_the_model(tmp_path):
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, personalize_epochs=1))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary["setting"][:3]) == ["fedavg", "fedavg+finetune", "pooled"]
    assert {"local A", "local B", "local C", "local D"} <= set(summary["setting"])
    assert summary["epsilon"].isna().all()
    assert summary["mean_client_accuracy"].between(0, 1).all() and summary["auroc"].between(0, 1).all()
    assert (summary["auroc_ci_low"] <= summary["auroc"]).all()
    assert summary["ece"].between(0, 1).all() and (summary["ece_ci_low"] <= summary["ece"]).all()
    assert summary[["cal_slope", "cal_intercept"]].notna().all().all()  # calibration beside AUROC
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2] and rounds["sites"].tolist() == ["A;B;C;D"] * 2
    metrics = pd.read_csv(run / "site_metrics.csv")
    assert set(metrics["site"]) == {"A", "B", "C", "D"} and set(metrics["round"]) == {1, 2}
    assert json.loads((run / "server_state" / "server_state.json").read_text())["round"] == 2
    # calibrated like every model: the federated temperature is the sites' weighted geometric mean
    sites = pd.read_csv(run / "sites.csv")
    assert list(sites["site"]) == ["A", "B", "C", "D"] and (sites["n_val"] > 0).all()
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["calibrator"]["method"] == "temperature"
    sent = sites.dropna(subset=["temperature"])  # a site whose validation stays hold one outcome sends nothing
    assert len(sent) >= 2 and sorted(card["calibrator"]["info"]["sites"]) == sorted(sent["site"])
    expected = np.exp(np.sum(sent["n_val"] * np.log(sent["temperature"])) / sent["n_val"].sum())
    assert card["calibrator"]["params"]["temperature"] == pytest.approx(expected)
    out = tmp_path / "scores.csv"
    scored = runner.invoke(app, ["predict", "--model", str(run / "model"), "--source", "synthetic", "--path",
                                 str(tmp_path / "cohort2"), "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    probs = pd.read_csv(out)["probability"]
    assert len(probs) > 0 and probs.between(0, 1).all()


def test_federate_bad_site_column_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, site_column="hospital"))])
    assert result.exit_code == 2
    assert "federated.site_column 'hospital' is not a column" in result.output
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, rounds=0))])
    assert result.exit_code == 2 and "federated.rounds" in result.output


def test_federate_with_dp_on_the_lstm_hybrid_reports_each_sites_budget_and_a_federated_report(tmp_path):
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    config = write_config(tmp_path, modalities=("ts", "static"), compare=False,
                          privacy={"noise_multiplier": 1.2, "max_grad_norm": 1.0},
                          server_privacy={"clip_norm": 1.0, "noise_multiplier": 0.5})
    result = runner.invoke(app, ["federate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    sites = pd.read_csv(run / "sites.csv")
    card = json.loads((run / "model" / "model.json").read_text())
    for row in sites.itertuples():  # each site's epsilon is Opacus's accountant over its 2 rounds
        reference = RDPAccountant()
        for _ in range(2 * math.ceil(row.n_train / 32)):
            reference.step(noise_multiplier=1.2, sample_rate=min(1.0, 32 / row.n_train))
        assert row.dp_steps == 2 * math.ceil(row.n_train / 32)
        assert row.epsilon == pytest.approx(reference.get_epsilon(row.delta), rel=1e-12)
        assert card["privacy"]["per_site"][row.site]["epsilon"] == pytest.approx(row.epsilon)
    assert card["privacy"]["epsilon"] == pytest.approx(sites["epsilon"].max())
    summary = pd.read_csv(run / "summary.csv")
    assert summary["setting"].tolist() == ["fedavg+dp+serverdp"]
    assert summary["epsilon"][0] == pytest.approx(sites["epsilon"].max())
    server = RDPAccountant()
    for _ in range(2):
        server.step(noise_multiplier=0.5, sample_rate=1.0)
    assert summary["server_epsilon"][0] == pytest.approx(server.get_epsilon(1e-5), rel=1e-12)
    assert card["privacy"]["server"]["epsilon"] == pytest.approx(summary["server_epsilon"][0])
    report = runner.invoke(app, ["report", str(run)])
    assert report.exit_code == 0, report.output
    html = (run / "report.html").read_text()
    assert "federated learning" in html and "fedavg, 2 rounds" in html
    assert f"A epsilon {sites['epsilon'][0]:.2f}" in html and "sites.csv" in html
    assert f"site-level epsilon {summary['server_epsilon'][0]:.2f}" in html


def test_the_reference_fits_stop_early_on_the_sites_validation_stays(tmp_path, monkeypatch):
    from healthfusion.workflows import federate as workflow

    seen = []

    class Recording(workflow.Trainer):
        def fit(self, model, train, val=None, head_kind="binary", **kw):
            seen.append((len(train), None if val is None else len(val), self.config.patience, self.config.max_epochs))
            return super().fit(model, train, val, head_kind, **kw)

    monkeypatch.setattr(workflow, "Trainer", Recording)
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, compare_epochs=3))])
    assert result.exit_code == 0, result.output
    pooled, *local = seen[-5:]  # the pooled reference, then one local-only model per site
    sites = pd.read_csv(tmp_path / "run" / "sites.csv")
    assert [v for _, v, _, _ in local] == sites["n_val"].tolist()  # each on its own site's validation stays
    assert pooled[1] == sites["n_val"].sum() and pooled[0] == sites["n_train"].sum()
    assert all(patience == 8 and epochs == 3 for _, _, patience, epochs in seen[-5:])
    assert "early stopping after 8 epochs" in result.output


def test_group_sites_balances_whole_values_deterministically():
    from healthfusion.workflows.federate import group_sites

    site_of = pd.Series(["h1"] * 6 + ["h2"] * 4 + ["h3"] * 3 + ["h4"] * 2 + ["h5"], index=[f"s{i}" for i in range(16)])
    grouped = group_sites(site_of, 2)
    # largest first, each to the smaller group: h1 (6) -> 1; h2 (4) -> 2; h3 (3) -> 2 (4 < 6); h4 (2) -> 1 (6 < 7);
    # h5 (1) -> 2 (7 < 8)
    assert grouped.groupby(site_of).nunique().eq(1).all()  # a hospital's stays stay together
    assert grouped.value_counts().to_dict() == {"group1": 8, "group2": 8}
    assert grouped.equals(group_sites(site_of.sample(frac=1, random_state=0), 2).reindex(site_of.index))
    with pytest.raises(ValueError, match="only 5 distinct values"):
        group_sites(site_of, 6)


def test_federate_groups_a_site_column_into_fewer_sites(tmp_path):
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, site_groups=2, compare=False))])
    assert result.exit_code == 0, result.output
    sites = pd.read_csv(tmp_path / "run" / "sites.csv")
    assert list(sites["site"]) == ["group1", "group2"]
    assert "grouped into 2 sites" in result.output


def test_every_summary_row_is_scored_calibrated_on_the_validation_stays_it_may_see(tmp_path, monkeypatch, caplog):
    from healthfusion.workflows import federate as workflow

    fitted = []

    def recording(model, data, head_kind="binary"):
        cal = fit_temperature(model, data, head_kind)
        fitted.append((None if data is None else len(data), None if cal is None else cal.params_["temperature"]))
        return cal

    fit_temperature = workflow.fit_temperature
    monkeypatch.setattr(workflow, "fit_temperature", recording)
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, compare_epochs=2))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    summary = pd.read_csv(run / "summary.csv").set_index("setting")
    sites = pd.read_csv(run / "sites.csv")
    card = json.loads((run / "model" / "model.json").read_text())
    assert summary.loc["fedavg", "temperature"] == pytest.approx(card["calibrator"]["params"]["temperature"])
    pooled, *local = fitted  # the pooled reference, then one local-only model per site
    assert pooled[0] == sites["n_val"].sum() and summary.loc["pooled", "temperature"] == pytest.approx(pooled[1])
    assert [n for n, _ in local] == sites["n_val"].tolist()  # each local model on its own site's validation stays
    for site, (_, temperature) in zip(sites["site"], local, strict=True):
        if temperature is None:  # validation stays with a single outcome: uncalibrated, and said so
            assert math.isnan(summary.loc[f"local {site}", "temperature"]) and f"local {site} reference is not" in \
                result.output + caplog.text
        else:
            assert summary.loc[f"local {site}", "temperature"] == pytest.approx(temperature)
    assert sum(t is not None for _, t in local) >= 2
    assert summary["temperature"].dropna().round(6).nunique() > 1  # not one shared temperature


def test_score_applies_each_sites_calibrator_before_the_calibration_metrics(tiny_sites, tiny_model):
    from healthfusion.evaluation.calibration import expected_calibration_error
    from healthfusion.models.calibration import Calibrator
    from healthfusion.workflows.federate import _score

    hot = Calibrator.from_dict({"method": "temperature", "params": {"temperature": 3.0}, "n_fit": 10})
    models = {s.name: tiny_model for s in tiny_sites}
    raw = _score(models, tiny_sites, 20, 0, {s.name: None for s in tiny_sites})
    scaled = _score(models, tiny_sites, 20, 0, {s.name: hot for s in tiny_sites})
    y = np.concatenate([s.test["target"] for s in tiny_sites])
    p = np.concatenate([s.predict(tiny_model) for s in tiny_sites])
    assert raw["temperature"] is None and scaled["temperature"] == 3.0
    assert raw["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert scaled["ece"] == pytest.approx(expected_calibration_error(y, hot.transform(p)))
    assert scaled["ece"] != pytest.approx(raw["ece"])
    # a temperature keeps each risk's side of 0.5 and the ranking
    assert scaled["mean_client_accuracy"] == raw["mean_client_accuracy"] and scaled["auroc"] == raw["auroc"]


def test_the_federated_summary_has_its_own_caption_in_the_report():
    from healthfusion.workflows.report_studies import _study_table

    frame = pd.DataFrame({"setting": ["fedavg", "pooled"], "auroc": [0.8, 0.81]})
    [fed] = _study_table(frame, "summary.csv", cut=False, kind="federate")
    [transfer] = _study_table(frame, "summary.csv", cut=False, kind="transfer")
    assert "every row scored calibrated by its temperature" in fed["caption"]
    assert "target test AUROC" in transfer["caption"] and "target" not in fed["caption"]
