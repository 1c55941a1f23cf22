"""The config reference and the editor schema say what the config models say (both are generated
from them)."""

import json

import jsonschema
import pytest
import yaml

from components.config import PROJECT, ConfigError, parse
from components.config.base import _Model
from tools import config_reference
from tools import mock_engine as harness

# --- the generated config reference and schema ----------------------------------------------------


def test_the_config_reference_is_what_the_models_say():
    """docs/configuration.md between its markers is generated from the config models' docstrings
    (`make docs`); a docstring, default or bound changed without it fails here."""
    current = config_reference.DOC.read_text()
    assert config_reference.rendered_doc(current) == current, \
        "docs/configuration.md is stale against components/config/: run `make docs`"


def test_the_editor_schema_is_what_the_models_say():
    assert config_reference.rendered_schema() == config_reference.SCHEMA.read_text(), \
        "schema/stack-config.schema.json is stale against components/config/: run `make docs`"


def test_check_fails_in_one_line_when_a_file_is_stale(tmp_path, monkeypatch, capsys):
    assert config_reference.main(["--check"]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(config_reference.DOC.read_text().replace("The minikube profile", "The profile"))
    monkeypatch.setattr(config_reference, "DOC", stale)
    assert config_reference.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err and "make docs" in err, err


def test_a_field_without_a_docstring_stops_the_reference():
    class Section(_Model):
        documented: int = 1
        """Says what it is."""
        bare: int = 2

    with pytest.raises(config_reference.Undocumented, match=r"Section.bare \(x.bare\) has no docstring"):
        config_reference._rows(Section, "x.")


def test_the_unknown_key_message_points_at_the_reference():
    raw = {k.split(":", 1)[1]: v for k, v in harness.stack_config("local").items()}
    with pytest.raises(ConfigError) as refused:
        parse({**raw, "modelz": []}, "Pulumi.local.yaml")
    assert "docs/configuration.md" in str(refused.value)
    assert config_reference.DOC.is_file()


def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(config_reference.SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def stack_file(stack: str) -> dict:
    return yaml.safe_load((harness.PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())


@pytest.mark.parametrize("stack", harness.STACKS)
def test_the_stack_files_validate_against_the_editor_schema(stack):
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in schema_validator().iter_errors(stack_file(stack))]
    assert errors == []


def test_the_editor_schema_takes_secrets_and_other_namespaces_and_refuses_a_misspelt_key():
    validator = schema_validator()
    doc = stack_file("eks")
    doc["config"].update({
        f"{PROJECT}:apiKey": {"secure": "v1:AAAA"},
        f"{PROJECT}:hfToken": {"secure": "v1:BBBB"},
        f"{PROJECT}:providerKeys": {"gpt-mini": {"secure": "v1:CCCC"}},
        "aws:region": "us-west-2",
        "kubernetes:enableServerSideApply": True,
    })
    assert list(validator.iter_errors(doc)) == []
    for wrong in ({f"{PROJECT}:modelz": []}, {f"{PROJECT}:modelsNamespace": {"secure": "v1:DDDD"}},
                  {f"{PROJECT}:accelerator": {"kind": "nvidia", "shareCount": 0}}):
        bad = stack_file("eks")
        bad["config"].update(wrong)
        assert list(validator.iter_errors(bad)), wrong
