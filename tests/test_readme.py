"""README.md stays true: the schema table matches the code, every config key and check is documented."""

from __future__ import annotations

from pathlib import Path

from pipeline.analysis.checks import CHECKS
from pipeline.config import AuditConfig, ExecutionConfig
from pipeline.schema import README_BEGIN, README_END, describe_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_schema_table_is_generated_from_the_code():
    block = README.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert block == describe_markdown(), "run `cueaudit schema --readme README.md`"


def test_every_config_key_and_check_is_documented():
    for key in AuditConfig.model_fields:
        assert f"`{key}" in README, key
    for key in ExecutionConfig.model_fields:
        assert f"execution.{key}" in README or f"`{key}`" in README, key
    for name in CHECKS.names():
        assert f"`{name}`" in README, name


def test_policy_block_shows_the_real_defaults():
    import yaml

    from pipeline.config import GatePolicy

    block = README.split("## Gate policy", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    assert GatePolicy.model_validate(doc) == GatePolicy(), "README's gate.yaml drifted from the defaults"
