"""`batcher models`: the endpoint's model list, to check a name before a job."""

from __future__ import annotations

import json

from batcher.mock.server import MODELS


def test_the_built_in_mock_lists_its_models_one_a_line_or_as_json(cli):
    listed = cli("models")
    assert listed.exit_code == 0, listed.stderr
    assert listed.stdout.splitlines() == list(MODELS)
    objects = json.loads(cli("models", "--json").stdout)
    assert [m["id"] for m in objects] == list(MODELS)
    assert objects[0] == {"id": MODELS[0], "object": "model", "created": 1_700_000_000,
                          "owned_by": "mock"}  # fmt: skip


def test_any_endpoint_with_its_key_and_a_wrong_key_in_one_line(cli, make_api):
    api = make_api(api_key="sk-right-7c1d")
    args = ("models", "--base-url", api.url, "--api-key-env", "KEY")
    assert cli(*args, env={"KEY": "sk-right-7c1d"}).stdout.splitlines() == list(MODELS)
    wrong = cli(*args, env={"KEY": "sk-wrong-93ab"})
    assert wrong.exit_code == 1
    assert wrong.stderr == (
        f"Error: GET {api.url}/models: HTTP 401 auth_error (Incorrect API key provided)\n"
    )
    assert "sk-wrong-93ab" not in wrong.stdout + wrong.stderr


def test_no_server_there_is_one_line_and_exit_1(cli):
    gone = cli("models", "--base-url", "http://127.0.0.1:9/v1")
    assert gone.exit_code == 1
    assert gone.stderr == (
        "Error: GET http://127.0.0.1:9/v1/models: cannot connect to 127.0.0.1:9: "
        "Connection refused\n"
    )
