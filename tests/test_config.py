"""Run configuration: defaults, YAML files and `key=value` overrides, typed; secrets stay out of logs."""

import pytest

from geosurge.config import PipelineConfig, load_config


def test_overrides_are_parsed_as_yaml_and_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 9\n  lr: 1\ngeocells:\n  tau_max: [500, 100]\n")
    config = load_config(str(path), ["train.epochs=3", "model.backbone_kwargs={img_size: 32}", "s3.endpoint_url=http://x:1"])
    assert config.train.epochs == 3  # the command line wins over the file
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.geocells.tau_max == (500, 100)
    assert config.model.backbone_kwargs == {"img_size": 32}
    assert config.s3.endpoint_url == "http://x:1"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown key 'epoch'"),
    ("nosuch.key=1", "not a config section"),
    ("train.epochs", "key.path=value"),
    ("geocells.tau_max=[10, 50]", "strictly decreasing"),
    ("train.zero_stage=4", "must be 0, 1, 2 or 3"),  # else a whole training run fails in DeepSpeed
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


def test_round_trip_and_fingerprint():
    config = load_config(overrides=["train.epochs=2"])
    again = PipelineConfig.from_dict(config.to_dict())
    assert again == config and again.fingerprint() == config.fingerprint()
    assert load_config().fingerprint() != config.fingerprint()


def test_credentials_are_never_in_the_logged_config():
    config = load_config(overrides=["s3.access_key_id=AKIAEXAMPLE", "s3.secret_access_key=s3cr3t"])
    text = config.to_yaml() + repr(config)
    assert "AKIAEXAMPLE" not in text and "s3cr3t" not in text
    assert config.to_dict(redact_secrets=False)["s3"]["secret_access_key"] == "s3cr3t"


def test_an_exponent_without_a_dot_is_a_number_and_text_in_a_number_field_is_refused():
    # PyYAML reads `1e-3` as text (YAML 1.1 wants `1.0e-3`): the README's `--set train.lr=1e-3` must still work
    config = load_config(overrides=["train.lr=1e-3", "retrain.lr=5e-5", "data.val_fraction=2e-2"])
    assert (config.train.lr, config.retrain.lr, config.data.val_fraction) == (1e-3, 5e-5, 2e-2)
    with pytest.raises(ValueError, match="lr: expected a number, got 'fast'"):
        load_config(overrides=["train.lr=fast"])


def test_a_logged_config_shows_no_credential_inside_a_uri():
    """What is logged (MLflow params, config.yaml, the model bundle) redacts every URI-borne credential; the run
    itself keeps them."""
    manifest = "https://photos.example.com/mp16.csv?X-Amz-Credential=AKIAX&X-Amz-Signature=deadbeef&v=2"
    config = load_config(overrides=[f"data.manifest={manifest}",
                                    "tracking.tracking_uri=http://alice:hunter2@mlflow:5000"])
    shown = config.to_yaml()
    assert "deadbeef" not in shown and "AKIAX" not in shown and "hunter2" not in shown
    assert "photos.example.com/mp16.csv" in shown and "v=2" in shown and "mlflow:5000" in shown
    assert config.to_dict(redact_secrets=False)["data"]["manifest"] == manifest
    assert config.resolved_tracking_uri == "http://alice:hunter2@mlflow:5000"
