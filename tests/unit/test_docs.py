"""The manual pages, the completion and docs/configuration.md are made from
the code (scripts/docs) and must be current; every config key is in
tunneld.yaml(5) with the truth about reloads; every command and option is in
tunneld(8). README.md and docs/*.md say only what works: their key commands
run as written, every command in their sh blocks names what exists, their YAML
uses real keys, and their links resolve inside the repository."""

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from tunneld import cli, config
from tunneld.service import reload

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tunneld" / "data"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


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


# --- README.md and docs/*.md ---------------------------------------------------

def blocks(doc: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", doc.read_text(), re.M | re.S)


def command_lines(block: str) -> list[str]:
    """The block's lines as a shell reads them: continuations joined, comments
    gone, and an optional part written `[--opt X]` taken as given."""
    lines = block.replace("\\\n", " ").splitlines()
    lines = [line.split("  #")[0].strip() for line in lines if not line.lstrip().startswith("#")]
    return [re.sub(r"\[([^\]]*)\]", r"\1", line) for line in lines if line]


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, without redirections and sudo;
    `sh -c '...'` counts as the commands inside."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace_split, lex.commenters = True, ""
    out, cmd, tokens = [], [], list(lex)
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in (";", "&&", "||", "|", "(", ")", "&"):
            out.append(cmd)
            cmd = []
        elif t in ("<", ">", ">>"):
            i += 1  # the file
        else:
            cmd.append(t)
        i += 1
    out.append(cmd)
    result = []
    for cmd in out:
        while cmd and cmd[0] == "sudo":
            cmd = cmd[1:]
        if cmd[:2] == ["sh", "-c"] and len(cmd) == 3:
            result += simple_commands(cmd[2])
        elif cmd:
            result.append(cmd)
    return result


def all_commands():
    for doc in DOCS:
        for block in blocks(doc, "sh"):
            for line in command_lines(block):
                for cmd in simple_commands(line):
                    yield doc, line, cmd


def test_every_code_block_is_one_the_checks_read():
    """The checks below read ```sh and ```yaml blocks: a block fenced as
    ```shell or ```bash would go unchecked, so no other language is used."""
    for doc in DOCS:
        for lang in re.findall(r"^```(.*?)\n.*?^```", doc.read_text(), re.M | re.S):
            assert lang in ("sh", "yaml", "ini", ""), f"{doc.name}: a ```{lang} block: write ```sh or ```yaml"
    assert {doc.name for doc, _, _ in all_commands()} >= {"README.md", "operating.md", "lan-bridge.md",
                                                           "full-tunnel.md", "performance.md", "testing.md"}


def test_every_tunneld_command_in_the_docs_parses():
    """Each `tunneld ...` in an sh block is a command line tunneld's own parser
    takes: no renamed command, no option that does not exist."""
    seen = 0
    for doc, line, cmd in all_commands():
        if cmd[0] != "tunneld":
            continue
        seen += 1
        try:
            cli._parser().parse_args(cmd[1:])
        except SystemExit as e:
            assert e.code == 0, f"{doc.name}: tunneld's parser refuses: {line}"
    assert seen > 20


def test_every_script_and_its_options_in_the_docs_exist():
    for doc, line, cmd in all_commands():
        if not cmd[0].startswith("scripts/"):
            continue
        script = ROOT / cmd[0]
        assert script.is_file() and os.access(script, os.X_OK), f"{doc.name}: {cmd[0]} is not an executable script"
        text = script.read_text()
        for arg in cmd[1:]:
            option = arg.split("=")[0]
            if option.startswith("--"):
                assert re.search(re.escape(option) + r"(?![\w-])", text), \
                    f"{doc.name}: {cmd[0]} has no option {option}: {line}"


def test_every_unit_and_manual_page_the_docs_name_exists():
    for doc, line, cmd in all_commands():
        if cmd[0] == "systemctl":
            for unit in cmd[1:]:
                if unit.startswith("tunneld@"):
                    assert (ROOT / "systemd" / "tunneld@.service").is_file(), line
                elif unit.startswith("tunneld."):
                    assert (ROOT / "systemd" / unit).is_file(), f"{doc.name}: no unit {unit}: {line}"
        if cmd[0] == "man" and cmd[1:2] != ["-l"]:
            for page in cmd[1:]:
                assert list(DATA.glob(f"{page}.[1-8]")), f"{doc.name}: no manual page {page}: {line}"


def test_the_key_commands_in_the_docs_work_as_written(tmp_path):
    """Every block that makes, shows or uses a key runs, as it stands, with
    `tunneld` on the PATH and /etc/tunneld standing for a folder of ours, each
    block on its own: a block that makes a key without umask 077 fails here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tunneld").write_text(f"#!/bin/sh\nexec {sys.executable} -m tunneld \"$@\"\n")
    (bin_dir / "tunneld").chmod(0o755)
    ran = 0
    for doc in DOCS:
        for n, block in enumerate(blocks(doc, "sh")):
            lines = [line for line in command_lines(block) if line == "umask 077" or re.search(
                r"tunneld (genkey|genpsk|pubkey)", line)]
            if not any("genkey" in line or "genpsk" in line for line in lines):
                continue
            etc = tmp_path / f"{doc.stem}-{n}"
            etc.mkdir()
            script = "\n".join(line.replace("/etc/tunneld", str(etc)).replace("sudo ", "") for line in lines)
            p = subprocess.run(["sh", "-ec", script], cwd=etc, capture_output=True, text=True,
                               env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
            assert p.returncode == 0 and "warning" not in p.stderr, (doc.name, script, p.stderr)
            keys = list(etc.glob("*.key")) + list(etc.glob("*.psk"))
            assert keys, (doc.name, script)
            for key in keys:
                assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0, \
                    f"{doc.name}: {key.name} is readable by others after: {script}"
            ran += 1
    assert ran >= 5


def key_paths(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else k
            yield path
            yield from key_paths(v, path)


def test_every_yaml_block_in_the_docs_uses_real_keys_and_a_whole_config_parses():
    documented = {k.path for k in config.KEYS}
    whole = 0
    for doc in DOCS:
        for block in blocks(doc, "yaml"):
            data = yaml.safe_load(block)
            for path in key_paths(data):
                assert path in documented, f"{doc.name}: {path} is not a config key:\n{block}"
            if {"interface", "transport", "encryption"} <= set(data):
                config.parse(block, source=doc.name)  # raises ConfigError naming the line
                whole += 1
            named = re.match(r"# (config/[\w.-]+\.yaml)", block)
            if named:
                assert data == yaml.safe_load((ROOT / named.group(1)).read_text()), \
                    f"{doc.name}: the block headed {named.group(1)} is not that file"
    assert whole >= 4


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def test_relative_links_between_readme_and_docs_resolve_inside_the_repository():
    checked = 0
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, man: and the like point outside on purpose
            path, _, fragment = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            assert dest == ROOT or ROOT in dest.parents, f"{doc.name}: {target} points outside the repository"
            assert dest.exists(), f"{doc.name}: {target}: no such file"
            if fragment:
                assert dest.suffix == ".md" and fragment in anchors(dest), f"{doc.name}: {target}: no such heading"
            checked += 1
    assert checked > 30
    assert "../" not in (ROOT / "README.md").read_text(), "README.md points outside the repository"


def test_repository_paths_the_docs_name_exist():
    """`tunneld/conn/steering.py`, `config/lan-a.yaml`, `tests/...`: a module that
    moves takes its mention in the docs with it."""
    for doc in DOCS:
        for path in re.findall(r"`((?:tunneld|config|tests|scripts|systemd|docs)/[\w./@-]*)`", doc.read_text()):
            assert (ROOT / path).exists(), f"{doc.name}: `{path}` does not exist"


def test_the_docs_speak_of_the_project_not_of_how_it_was_made():
    for doc in DOCS:
        found = re.search(r"\bthe brief\b|\bissue \d|\bwas assigned\b", doc.read_text(), re.I)
        assert not found, f"{doc.name}: says {found.group(0)!r}"
