"""MLflow set-up: where runs go, what they are called, the one place clients are made."""

from pathlib import Path

from pipeline import tracking


def test_tracking_uri_comes_from_config_then_environment_then_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.resolve_tracking_uri() == "http://127.0.0.1:1"
    assert tracking.resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_a_file_store_uri_is_refused_in_one_line_unless_mlflow_is_told_to_allow_it(tmp_path, monkeypatch):
    import pytest

    from pipeline.errors import ConfigError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (f"file:{tmp_path}/mlruns", f"file://{tmp_path}/mlruns", "./mlruns", "mlruns", str(tmp_path)):
        with pytest.raises(ConfigError, match="file store.*sqlite:///"):
            tracking.resolve_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    with pytest.raises(ConfigError, match="MLflow 3 refuses"):
        tracking.resolve_tracking_uri()
    assert tracking.resolve_tracking_uri("databricks") == "databricks"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert tracking.resolve_tracking_uri("./mlruns") == "./mlruns"


def test_run_names_tell_what_was_run():
    assert tracking.describe_run("unet", 3, "dice_ce", [2, 2, 2], "data_manifests/synthetic.json", 60, 0) == \
        "unet3d-dice_ce-2mm-synthetic-e60-s0"
    assert tracking.describe_run("dynunet", 2, "dice", [0.9, 0.9, 5], None, None, 3) == "dynunet2d-dice-0.9x0.9x5mm-s3"
    assert tracking.describe_run(spacing=None).startswith("unet3d-dice_ce-native")


def test_client_writes_to_the_store_it_was_given_with_artifacts_beside_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/runs.db"
    mlflow_client = tracking.client(uri)
    exp = tracking.experiment_id(mlflow_client, "t", uri)
    assert tracking.experiment_id(mlflow_client, "t", uri) == exp  # found, not created twice
    run = mlflow_client.create_run(exp)
    mlflow_client.log_metric(run.info.run_id, "dice", 0.5)
    assert Path(tmp_path / "runs.db").is_file()
    assert mlflow_client.get_experiment(exp).artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert tracking.client(uri).get_run(run.info.run_id).data.metrics == {"dice": 0.5}


def test_only_http_stores_can_be_unreachable():
    assert tracking.server_unreachable("sqlite:///nowhere.db") is None
    assert tracking.server_unreachable("http://127.0.0.1:9", timeout=1.0)  # discard port: nobody answers
