"""The package's folders are its layers, and imports point only downward.

    6  __main__                              python -m tunneld
    5  cli                                   the command line
    4  service/                              the daemon: relay, control, metrics, reload, systemd
    3  config/                               YAML in, frozen dataclasses out; wg-quick import
    2  wg/  tun/  conn/  host/               the protocol, the device, the underlay, the host's kernel
    1  core/                                 the pure tunnel and the contracts the layer above fills
    0  packet/  errors                       packet bytes, sizes and limits; the start-up error

A module may import from its own folder and from any folder of a lower layer,
never from its own layer's siblings or from above (a layer-2 folder is one of
four plug-ins into the core: the WireGuard session, the TUN/TAP device, the
UDP/TCP transports, the host's netlink and privileges, and none needs another).
"""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tunneld"
LAYERS = {"errors": 0, "packet": 0, "core": 1, "wg": 2, "tun": 2, "conn": 2, "host": 2, "config": 3,
          "service": 4, "cli": 5, "__main__": 6}


def unit(module: str) -> str:
    """tunneld.conn.udp -> conn; tunneld.cli -> cli; tunneld -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tunneld":
            if node.module == "tunneld":
                for alias in node.names:
                    yield node.lineno, f"tunneld.{alias.name}"
            else:
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tunneld":
                    yield node.lineno, alias.name


def violations():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        me = unit(".".join(rel.parts).removesuffix(".__init__"))
        if me == "":  # tunneld/__init__.py: the version string only
            continue
        for line, target in imports(path):
            them = unit(target)
            if them in ("", me) or them == "__version__":
                continue
            if them not in LAYERS or me not in LAYERS:
                found.append(f"{rel}:{line}: {target}: not in a known layer")
            elif LAYERS[them] >= LAYERS[me]:
                found.append(f"{rel}:{line}: {me} (layer {LAYERS[me]}) imports {target} (layer {LAYERS[them]})")
    return found


def test_every_top_level_entry_is_a_known_layer():
    names = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert names - {"__init__"} == set(LAYERS)


def test_imports_point_only_downward():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a core module importing the service layer is caught."""
    fake = tmp_path / "tunneld"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "x.py").write_text("from tunneld.service import relay\nfrom tunneld.packet import layout\n")
    (fake / "wg").mkdir()
    (fake / "wg" / "y.py").write_text("from tunneld import conn\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations() == ["tunneld/core/x:1: core (layer 1) imports tunneld.service (layer 4)",
                            "tunneld/wg/y:1: wg (layer 2) imports tunneld.conn (layer 2)"]
