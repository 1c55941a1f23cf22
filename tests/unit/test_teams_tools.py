"""`.github/CODEOWNERS` names each team's owners on the team's folder, and is never stale."""

from __future__ import annotations

import yaml

from tools import teams


def test_the_codeowners_file_is_what_the_stack_files_say():
    assert teams.main(["codeowners", "--check"]) == 0, "run `make docs`"


def test_each_teams_folder_is_owned_by_its_owners_and_other_lines_stay(tmp_path):
    (tmp_path / "Pulumi.eks.yaml").write_text(yaml.safe_dump({"config": {
        "llm-platform:teams": {"research": {"memory": "8Gi", "owners": ["@acme/research", "ana@acme.example"]},
                               "quiet": {"memory": "8Gi"}}}}))
    (tmp_path / "Pulumi.gke.yaml").write_text(yaml.safe_dump({"config": {
        "llm-platform:teamModelsDir": "teams", "llm-platform:teams": {"research": {"memory": "8Gi",
                                                                                 "owners": ["@acme/tpu"]}}}}))
    current = "* @acme/platform\n"
    text = teams.rendered(current, tmp_path)
    assert text.splitlines() == ["* @acme/platform", "", teams.BEGIN,
                                 "/models/research/ @acme/research ana@acme.example",
                                 "/teams/research/ @acme/tpu", teams.END]
    # Rendered again: the block is replaced in place, nothing else moves.
    assert teams.rendered(text, tmp_path) == text
