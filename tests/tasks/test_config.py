"""The pipeline's model section mirrors the core config, so no RQ-VAE option is unreachable from `--set`."""

from tasks.config import ModelConfig, PipelineConfig, _core_fields, load_config


def test_model_section_mirrors_the_core_config():
    assert set(ModelConfig.model_fields) == _core_fields()
    core = PipelineConfig().model.to_core(input_dim=384, seed=0)
    assert core.codebook_size == 256 and core.hidden_dims == (512, 256, 128)


def test_overrides_parse_json_values():
    config = load_config(None, ["fit.epochs=7", "model.hidden_dims=[64,32]", "embed.model=some/path"])
    assert config.fit.epochs == 7 and config.model.hidden_dims == [64, 32] and config.embed.model == "some/path"
