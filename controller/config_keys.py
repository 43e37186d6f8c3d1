"""Every setting of the controller, in one table: its key in the config file (and so its
environment variable, BILEVEL_<SECTION>__<KEY>), its kind, and the command-line flag
that sets it, if any, with that flag's help. The loader (config_file.py) maps the file,
the environment and the flags onto ServerConfig (config.py) through this table; the CLI
builds its controller flags from it (controller/commands/controller_flags.py).

Kinds: str, int, float, bool, path, bytes (an int or "512MiB"), list (of str), table
(str -> str; env: key=value,key=value), gpus ("none", "auto" or a list of slots). The
[quotas.*] keys are named by principal and come from controller/quotas.py (kind_of).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller import quotas
from controller.config import DEFAULT_PORT
from controller.llm.keys import KEY_ENV

ENV_PREFIX = "BILEVEL_"
# Who has a setting's flag: `bilevel serve` only; every command that runs or embeds a
# controller (commands that only read the state dir accept it unlisted); every command
# with a state dir; the commands whose controller holds LLM keys.
SERVE, CONTROLLER, STATE, LLM = "serve", "controller", "state", "llm"


@dataclass(frozen=True)
class Setting:
    kind: str
    flag: str = ""  # the command-line flag that sets it ("": only the file and env do)
    scope: str = ""  # SERVE, CONTROLLER, STATE or LLM: which commands have the flag
    help: str = ""
    dest: str = ""  # the flag's argparse dest, where it is not the flag's own name
    choices: tuple[str, ...] = ()
    metavar: str = ""
    # The flag may be given again; its values come before the file's and environment's
    # (a key file) or after them (a base URL): flags add to a list, never replace it.
    repeat: bool = False

    @property
    def flag_dest(self) -> str:
        return self.dest or self.flag.removeprefix("--").replace("-", "_")


KEYS: dict[str, Setting] = {
    "server.listen": Setting(
        "str", "--listen", SERVE, f"serve TCP on HOST:PORT too (e.g. 127.0.0.1:{DEFAULT_PORT}; "
        "port 0: any), which needs a token; without it only the Unix socket in the state "
        "dir is served, to this user"),
    "server.token_file": Setting(
        "path", "--token-file", SERVE, "accepted bearer tokens, one per line (default: "
        "$BILEVEL_TOKEN)", dest="server_token_file"),
    "server.tls.cert_file": Setting("path", "--tls-cert", SERVE,
                                    "server certificate (PEM): serve TLS"),
    "server.tls.key_file": Setting("path", "--tls-key", SERVE, "server private key (PEM)"),
    "server.tls.client_ca_file": Setting("path", "--tls-client-ca", SERVE,
                                         "CA of client certificates: require mutual TLS"),
    "server.tls.ca_file": Setting("path"),
    "server.tls.server_name": Setting("str"),
    "server.execute_queue": Setting(
        "int", "--execute-queue", SERVE, "Execute calls that may wait for a slot before "
        "RESOURCE_EXHAUSTED (default 8)"),
    "server.state_dir": Setting(
        "path", "--state-dir", STATE, "runs, trials, events and artifacts (default: "
        "$BILEVEL_STATE_DIR, ./.bilevel if present, else ~/.local/share/bilevel)"),
    "sandbox.image": Setting("str", "--image", CONTROLLER, "sandbox image (default: the one "
                             "built for this checkout by `bilevel image build`)"),
    "sandbox.slots": Setting("int", "--slots", CONTROLLER, "sandbox jobs at once (default 2; "
                             "with GPUs one per GPU slot)"),
    "sandbox.pool_size": Setting("int", "--pool-size", CONTROLLER, "warm containers waiting "
                                 "per job class, each used once (default: sandbox.slots; 0: "
                                 "every job starts cold)"),
    "sandbox.pool_memory_mb": Setting("int", "--pool-memory-mb", CONTROLLER, "memory limits "
                                      "of all waiting warm containers together (default "
                                      "8192)"),
    "sandbox.pool_idle_seconds": Setting("float", "--pool-idle-seconds", CONTROLLER,
                                         "a waiting warm container is removed after this "
                                         "(default 120)"),
    "sandbox.gpus": Setting("gpus", "--gpus", CONTROLLER, "'none' (default), 'auto' (every "
                            "GPU or MIG slice nvidia-smi lists), or ids: '0,1', 'MIG-…', "
                            "'0+1'"),
    "sandbox.runtime": Setting(
        "str", "--runtime", CONTROLLER, "the least isolation a job gets: runsc runs every "
        "job under gVisor; auto (the default) does so where runsc is registered with the "
        "engine, else warns and uses runc; runc lets each job choose",
        choices=("auto", "runc", "runsc")),
    "sandbox.namespace": Setting("str", "--namespace", CONTROLLER, "label of this "
                                 "controller's containers; its orphans are reaped (default: "
                                 "default)"),
    "sandbox.docker_url": Setting("str", "--docker-url", CONTROLLER,
                                  "Docker engine URL (default: from environment)"),
    "server.max_runs": Setting("int", "--max-runs", CONTROLLER,
                               "runs active at once (default 4)"),
    "sandbox.backend": Setting(
        "str", "--backend", CONTROLLER, "where jobs run: this host's Docker engine (default) "
        "or the nodes of a Ray cluster (README#ray; needs `pip install .[ray]`)",
        choices=("docker", "ray")),
    "sandbox.ray_address": Setting("str", "--ray-address", CONTROLLER, "HOST:PORT of the Ray "
                                   "cluster's head (GCS) for --backend ray"),
    "server.max_streams": Setting("int"),
    "server.max_streams_per_client": Setting("int"),
    "server.max_request_bytes_in_flight": Setting("bytes"),
    "server.shutdown_grace_seconds": Setting("float"),
    "server.state_dir_max_bytes": Setting("bytes"),
    "sandbox.allowed_images": Setting("list"),
    "sandbox.max_wall_seconds": Setting("float"),
    "sandbox.max_memory_bytes": Setting("bytes"),
    "sandbox.max_cpus": Setting("float"),
    "sandbox.max_pids": Setting("int"),
    "sandbox.max_output_bytes": Setting("bytes"),
    "sandbox.max_returned_file_bytes": Setting("bytes"),
    "sandbox.max_tmp_bytes": Setting("bytes"),
    "sandbox.max_disk_bytes": Setting("bytes"),
    "limits.wall_seconds": Setting("float"),
    "limits.memory_bytes": Setting("bytes"),
    "limits.cpus": Setting("float"),
    "limits.pids": Setting("int"),
    "limits.output_bytes": Setting("bytes"),
    "limits.returned_file_bytes": Setting("bytes"),
    "limits.tmp_bytes": Setting("bytes"),
    "limits.disk_bytes": Setting("bytes"),
    "retention.max_age_days": Setting("float"),
    "retention.max_finished_runs": Setting("int"),
    "retention.sweep_seconds": Setting("float"),
    "llm.key_files": Setting(
        "table", "--llm-key-file", LLM, "file holding the API key of a provider (default: "
        f"{', '.join(KEY_ENV.values())} from the environment)", metavar="PROVIDER=PATH",
        repeat=True),
    "llm.allowed_base_urls": Setting(
        "list", "--llm-base-url", LLM, "a base URL runs may use (the controller's key is "
        "sent there); repeatable", metavar="URL", repeat=True),
    "llm.principal_key_dir": Setting("path"),
    "auth.principals_file": Setting("path"),
    "auth.certificates": Setting("table"),
    "memory.shared": Setting("bool"),
}


def kind_of(key: str) -> str | None:
    """The kind of a known setting, None for an unknown one."""
    setting = KEYS.get(key)
    return setting.kind if setting is not None else quotas.kind_of(key)


def env_name(key: str) -> str:
    """The environment variable of a key: sandbox.gpus -> BILEVEL_SANDBOX__GPUS."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def flag_of(key: str) -> str:
    """The flag that sets `key`, or "" when none does."""
    setting = KEYS.get(key)
    return setting.flag if setting is not None else ""
