"""The manual pages and the completion are made from the code (scripts/docs)
and must be current; every config key is in tunneld.yaml(5) with the truth
about reloads; every command and option is in tunneld(8)."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tunneld import cli, config, reload

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tunneld" / "data"


def plain(roff: str) -> str:
    return re.sub(r"\\f[BIRP]|\\&", "", roff).replace("\\-", "-")


def test_generated_files_are_current():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_every_config_key_is_in_the_yaml_manual_with_type_default_and_reload():
    page = plain((DATA / "tunneld.yaml.5").read_text())
    for key in config.KEYS:
        entry = re.search(rf"^{re.escape(key.path)} \((.+)\)$\n(.+)\n\.br\n(.+)$", page, re.M)
        assert entry, f"{key.path} is not in tunneld.yaml(5)"
        assert entry.group(1) == key.type
        assert ("restart" in entry.group(3)) is (not key.reload)


def test_every_key_of_the_bundled_configs_is_documented():
    documented = {k.path for k in config.KEYS}

    def paths(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                path = f"{prefix}.{k}" if prefix else k
                yield path
                yield from paths(v, path)
    for cfg in (ROOT / "config").glob("*.yaml"):
        for path in paths(yaml.safe_load(cfg.read_text())):
            assert path in documented, f"{cfg.name}: {path} is not in config.KEYS"


def test_reload_marks_agree_with_what_a_reload_refuses():
    restart = {f"{section}.{f}" for section, fields in reload.RESTART_KEYS.items() for f in fields}
    restart |= {"name", "run_as", "hooks", "metrics", "encryption", "encryption.wireguard_compatible"}
    for key in config.KEYS:
        top = key.path.split(".")[0]
        if key.path in restart or top in ("run_as", "hooks", "metrics") or key.path in ("interface", "transport"):
            assert not key.reload, f"{key.path}: a reload refuses a change, but KEYS says it applies it"
        else:
            assert key.reload, f"{key.path}: a reload applies a change, but KEYS says restart"


def test_every_command_and_option_is_in_the_command_manual():
    page = plain((DATA / "tunneld.8").read_text())
    parser = cli._parser()
    helps = {"-h", "--help"}  # every command has them; argparse-manpage leaves them out
    for action in parser._actions:
        for option in set(action.option_strings) - helps:
            assert option in page, option
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"tunneld {name}" in page, name
        for action in p._actions:
            for option in set(action.option_strings) - helps:
                assert option in page, f"{name} {option}"
    for heading in ("EXIT STATUS", "SIGNALS", "FILES"):
        assert f".SH {heading}" in (DATA / "tunneld.8").read_text()
    assert re.search(r"^\.B 3$", (DATA / "tunneld.8").read_text(), re.M)


def test_bash_completion_loads_and_completes_commands():
    script = f"source {DATA / 'tunneld.bash'}; COMP_WORDS=(tunneld rel); COMP_CWORD=1; " \
             "COMP_LINE='tunneld rel'; COMP_POINT=${#COMP_LINE}; " \
             "$(complete -p tunneld | sed -E 's/.* -F ([^ ]+) .*/\\1/') tunneld rel tunneld; echo ${COMPREPLY[@]}"
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "reload" in p.stdout.split()
