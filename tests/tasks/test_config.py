"""The pipeline's model and fit sections mirror the core configs: every option reachable, defaults defined once."""

import dataclasses

from rqvae_core.config import RQVAEConfig, TrainConfig
from tasks.config import FitConfig, ModelConfig, PipelineConfig, _core_fields, _train_fields, load_config


def test_model_section_mirrors_the_core_config_and_its_defaults():
    assert set(ModelConfig.model_fields) == _core_fields()
    core = PipelineConfig().model.to_core(input_dim=RQVAEConfig().input_dim, seed=RQVAEConfig().seed)
    assert core == RQVAEConfig()


def test_fit_section_holds_the_optimiser_with_the_core_defaults():
    assert _train_fields() <= set(FitConfig.model_fields)
    assert not _train_fields() & set(ModelConfig.model_fields), "optimiser settings belong to fit, not model"
    assert PipelineConfig().fit.to_core() == TrainConfig()
    tuned = load_config(None, ["fit.lr=0.002", "fit.warmup_steps=3"]).fit.to_core()
    assert dataclasses.replace(TrainConfig(), lr=0.002, warmup_steps=3) == tuned


def test_overrides_parse_json_values():
    config = load_config(None, ["fit.epochs=7", "model.hidden_dims=[64,32]", "embed.model=some/path"])
    assert config.fit.epochs == 7 and config.model.hidden_dims == [64, 32] and config.embed.model == "some/path"
