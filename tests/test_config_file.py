"""One TOML file, environment overrides, flags on top; validated at start with errors
that name the key, where its value came from and what would be valid."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.cli import build_parser
from controller.config import ConfigError, ServerConfig
from controller.config_file import load, read_file
from controller.config_keys import KEYS
from controller.sandbox.gpus import GpuConfigError, GpuSlot

REPO = Path(__file__).resolve().parents[1]
TOKEN = "t" * 32


def main(argv: list[str]) -> int:
    """The CLI without its logging set-up (which would bind structlog to capsys)."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def _no_gpus(_url: str | None, _image: str | None) -> tuple[GpuSlot, ...]:
    raise AssertionError("GPU discovery should not run")


def _load(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None,
          flags: dict[str, Any] | None = None, discover: Any = _no_gpus) -> ServerConfig:
    path = tmp_path / "bilevel.toml"
    path.write_text(toml)
    return load(path, {"BILEVEL_STATE_DIR": str(tmp_path / "state"), **(env or {})},
                flags or {}, discover_gpus=discover)


def test_the_file_sets_every_section(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(f"# ops\n{TOKEN}\n")
    config = _load(tmp_path, f"""
[server]
listen = "0.0.0.0:6000"
token_file = "{tmp_path / 'tokens'}"
max_runs = 3
[sandbox]
image = "img:1"
runtime = "runsc"
slots = 5
namespace = "prod"
allowed_images = ["img:2"]
[limits]
memory_bytes = "2GiB"
wall_seconds = 30
""")
    assert config.listen == "0.0.0.0:6000"
    assert config.tokens == (TOKEN,)
    assert config.max_active_runs == 3
    ex = config.executor
    assert (ex.image, ex.runtime, ex.slots, ex.namespace) == ("img:1", "runsc", 5, "prod")
    assert ex.allowed_images == ("img:2",)
    assert config.default_limits.memory_bytes == 2 << 30
    assert config.default_limits.wall_seconds == 30.0


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    toml = "[sandbox]\nslots = 2\nnamespace = \"file\"\nimage = \"file\"\n"
    env = {"BILEVEL_SANDBOX__SLOTS": "3", "BILEVEL_SANDBOX__NAMESPACE": "env"}
    config = _load(tmp_path, toml, env, {"sandbox.slots": 4})
    assert config.executor.slots == 4
    assert config.executor.namespace == "env"
    assert config.executor.image == "file"


def test_nested_tables_have_env_names_too(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    config = _load(tmp_path, env={"BILEVEL_SERVER__TLS__CERT_FILE": str(tmp_path / "c.pem"),
                                  "BILEVEL_SERVER__TLS__KEY_FILE": str(tmp_path / "k.pem")})
    assert config.tls is not None and config.tls.cert_file == tmp_path / "c.pem"


def test_defaults_without_any_file(tmp_path: Path) -> None:
    config = load(None, {"BILEVEL_STATE_DIR": str(tmp_path)}, {}, discover_gpus=_no_gpus)
    assert config.listen == "" and config.tcp_address() is None  # the private socket only
    assert config.executor.slots == 2 and config.executor.gpu_slots == ()
    assert config.executor.runtime == "auto"


@pytest.mark.parametrize("toml, env, message", [
    ("[sandbox]\nslot = 2\n", {}, "unknown setting sandbox.slot; did you mean sandbox.slots"),
    ("[sandbox]\nslots = \"two\"\n", {}, r"sandbox.slots \(from .*bilevel.toml\): 'two' is "
                                         "not a valid integer"),
    ("", {"BILEVEL_SANDBOX__SLOTZ": "2"}, "environment variable BILEVEL_SANDBOX__SLOTZ: "
                                          "unknown setting"),
    ("", {"BILEVEL_LIMITS__MEMORY_BYTES": "lots"}, "BILEVEL_LIMITS__MEMORY_BYTES.*size"),
    ("[sandbox]\nruntime = \"kata\"\n", {}, r"sandbox.runtime \(from .*bilevel.toml\): 'kata': "
                                            "use one of auto, runc, runsc"),
    ("[server]\nlisten = \"nowhere\"\n", {}, "use HOST:PORT"),
    ("[limits]\ntmp_bytes = \"8GiB\"\n", {}, r"limits.tmp_bytes \(from .*bilevel.toml\): must "
                                          "be at least 1 MiB and at most limits.memory_bytes"),
    ("", {"BILEVEL_SANDBOX__MAX_CPUS": "0"}, r"sandbox.max_cpus \(from "
                                             r"BILEVEL_SANDBOX__MAX_CPUS\): must be"),
    ("[server.tls]\ncert_file = \"/x.pem\"\n", {}, "go together"),
    ("[server.tls]\nclient_ca_file = \"/x.pem\"\n", {}, "needs server.tls.cert_file"),
    ("[server\n", {}, "not valid TOML"),
    ("[server]\ntoken_file = \"/nonexistent/tokens\"\n", {}, "/nonexistent/tokens"),
])
def test_deny_invalid_settings_with_a_message_naming_them(
        tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, toml, env)


def test_a_missing_config_file_says_where_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file.*deploy/bilevel\.toml"):
        load(tmp_path / "absent.toml", {}, {}, discover_gpus=_no_gpus)


def test_the_config_env_variable_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[sandbox]\nnamespace = \"from-env-file\"\n")
    config = load(None, {"BILEVEL_CONFIG": str(tmp_path / "c.toml"),
                         "BILEVEL_STATE_DIR": str(tmp_path)}, {}, discover_gpus=_no_gpus)
    assert config.executor.namespace == "from-env-file"


def test_unreadable_tls_files_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        _load(tmp_path, f"[server.tls]\ncert_file = \"{tmp_path}/c\"\nkey_file = "
                        f"\"{tmp_path}/k\"\n")


# GPUs


def test_listed_gpus_become_slots_and_set_the_job_slots(tmp_path: Path) -> None:
    config = _load(tmp_path, "[sandbox]\ngpus = [\"0\", \"1\", \"2+3\"]\n")
    assert config.executor.gpu_slots == (("0",), ("1",), ("2", "3"))
    assert config.executor.slots == 3


def test_gpus_from_the_environment_are_comma_separated(tmp_path: Path) -> None:
    config = _load(tmp_path, env={"BILEVEL_SANDBOX__GPUS": "MIG-a,MIG-b"})
    assert config.executor.gpu_slots == (("MIG-a",), ("MIG-b",))


def test_auto_discovers_slots_from_the_engine_and_image(tmp_path: Path) -> None:
    asked: list[tuple[str | None, str | None]] = []

    def found(url: str | None, image: str | None) -> tuple[GpuSlot, ...]:
        asked.append((url, image))
        return (("GPU-a",), ("GPU-b",))

    config = _load(tmp_path, "[sandbox]\ngpus = \"auto\"\nimage = \"img:gpu\"\n",
                   discover=found)
    assert asked == [(None, "img:gpu")]
    assert config.executor.gpu_slots == (("GPU-a",), ("GPU-b",))
    assert config.executor.slots == 2


def test_auto_without_gpus_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    def missing(_url: str | None, _image: str | None) -> tuple[GpuSlot, ...]:
        raise GpuConfigError("found no GPU")

    with pytest.raises(ConfigError, match=r"sandbox.gpus = \"auto\" \(from "
                                          r"BILEVEL_SANDBOX__GPUS\): found no GPU"):
        _load(tmp_path, env={"BILEVEL_SANDBOX__GPUS": "auto"}, discover=missing)


def test_none_means_no_gpu_slots(tmp_path: Path) -> None:
    config = _load(tmp_path, "[sandbox]\ngpus = \"auto\"\n",
                   env={"BILEVEL_SANDBOX__GPUS": "none"})
    assert config.executor.gpu_slots == ()


def test_deny_a_slot_count_that_contradicts_the_gpus(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one job slot per GPU slot"):
        _load(tmp_path, "[sandbox]\ngpus = [\"0\", \"1\"]\nslots = 4\n")


def test_deny_a_gpu_in_two_slots(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="in two slots"):
        _load(tmp_path, env={"BILEVEL_SANDBOX__GPUS": "0,0+1"})


# The shipped example and the command line


def test_the_deploy_example_uses_only_known_keys() -> None:
    values = read_file(REPO / "deploy" / "bilevel.toml")
    assert set(values) <= set(KEYS)
    assert values["sandbox.runtime"].value == "runsc"


def test_every_flag_sets_the_key_it_is_listed_with(tmp_path: Path) -> None:
    """The controller's flags are made from the table of keys: a flag overrides its key
    and an invalid value is told as the flag the user typed."""
    from controller.commands.controller_flags import flags_of, server_config

    args = build_parser(["serve"]).parse_args(
        ["serve", "--state-dir", str(tmp_path), "--slots", "3", "--namespace", "cli",
         "--max-runs", "2", "--execute-queue", "5", "--runtime", "runc"])
    flags = flags_of(args)
    assert {k for k, s in KEYS.items() if s.flag} == set(flags)
    config = server_config(args)
    assert (config.executor.slots, config.executor.namespace, config.executor.runtime) == (
        3, "cli", "runc")
    assert (config.max_active_runs, config.execute_queue, config.state_dir) == (
        2, 5, tmp_path)
    bad = build_parser(["serve"]).parse_args(["serve", "--state-dir", str(tmp_path),
                                              "--listen", "nowhere"])
    with pytest.raises(ConfigError, match=r"^--listen: 'nowhere': use HOST:PORT"):
        server_config(bad)


def test_llm_key_files_come_from_the_file_and_the_flags_add_to_them(tmp_path: Path) -> None:
    toml = ('[llm]\nallowed_base_urls = ["https://a.example"]\n'
            '[llm.key_files]\nanthropic = "/keys/a"\nopenai = "/keys/o"\n')
    config = _load(tmp_path, toml, flags={
        "llm.key_files": ["openai=/cli/o"], "llm.allowed_base_urls": ["https://b.example"]})
    assert config.llm.key_file("anthropic") == Path("/keys/a")
    assert config.llm.key_file("openai") == Path("/cli/o")  # the command line's wins
    assert config.llm.allowed_base_urls == ("https://a.example", "https://b.example")
    env = _load(tmp_path, env={"BILEVEL_LLM__KEY_FILES": "openai=/env/o"})
    assert env.llm.key_file("openai") == Path("/env/o")
    with pytest.raises(ConfigError, match=r"^--llm-key-file: 'gemini': use PROVIDER=PATH"):
        _load(tmp_path, flags={"llm.key_files": ["gemini=/k"]})
    with pytest.raises(ConfigError, match=r"^--llm-key-file: 'openai' is not a valid table"):
        _load(tmp_path, flags={"llm.key_files": ["openai"]})


def test_serve_stops_at_start_with_the_error_and_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.toml").write_text("[sandbox]\ngpu = \"auto\"\n")
    code = main(["serve", "--config", str(tmp_path / "bad.toml")])
    assert code == 2
    assert "unknown setting sandbox.gpu; did you mean sandbox.gpus?" in capsys.readouterr().err


def test_serve_check_reports_an_unreachable_controller(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--check", "--listen", "127.0.0.1:9", "--state-dir", str(tmp_path)])
    assert code == 1
    assert "unhealthy: UNAVAILABLE" in capsys.readouterr().err


def test_serve_check_speaks_tls_to_a_running_controller(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_api_harness import ServerThread, make_config

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=t",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    from controller.config import TlsConfig

    config = make_config(tmp_path / "state", None, docker_url="unix:///nonexistent/x.sock",
                         tls=TlsConfig(cert, key), tokens=("check-token-0123456789abcdef",))
    server = ServerThread(config)
    try:
        code = main(["serve", "--check", "--listen", f"127.0.0.1:{server.port}",
                     "--tls-cert", str(cert), "--tls-key", str(key),
                     "--state-dir", str(tmp_path)])
    finally:
        server.stop()
    # A TLS answer: the engine is unreachable, so the sandbox service is not serving.
    assert code == 1
    assert "bilevel.v1.SandboxService: NOT_SERVING" in capsys.readouterr().out


def test_serve_check_without_listen_asks_the_private_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_api_harness import serving

    state = tmp_path / "state"
    assert main(["serve", "--check", "--state-dir", str(state)]) == 1
    assert "no controller serves state dir" in capsys.readouterr().err
    with serving(state, None, docker_url="unix:///nonexistent/x.sock") as server:
        assert server.address.startswith("unix:")
        assert main(["serve", "--check", "--state-dir", str(state)]) == 1  # no engine
    assert "bilevel.v1.SandboxService: NOT_SERVING" in capsys.readouterr().out


def test_the_warm_pool_is_sized_to_the_slots_unless_set(tmp_path: Path) -> None:
    from controller.commands.controller_flags import server_config

    def config(*flags: str) -> Any:
        args = build_parser(["serve"]).parse_args(
            ["serve", "--state-dir", str(tmp_path), "--slots", "3", *flags])
        return server_config(args).executor.pool

    assert (config().size, config().idle_seconds) == (3, 120.0)
    pool = config("--pool-size", "0", "--pool-memory-mb", "512", "--pool-idle-seconds", "9")
    assert (pool.size, pool.memory_bytes, pool.idle_seconds) == (0, 512 << 20, 9.0)
    with pytest.raises(ConfigError, match="pool-size"):
        config("--pool-size", "99")
