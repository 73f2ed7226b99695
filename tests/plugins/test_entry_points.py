"""A plugin installed as a real package (a dist-info in a temporary site directory) is discovered."""

from __future__ import annotations

import json
import textwrap

from tests.plugins.helpers import SIMPLE_TOOL, write_config
from zenthor.plugins.registry import load_plugins
from zenthor.plugins.tools import ToolContext, ToolRegistry


def install(site, dist: str, version: str, package: str, entry_points: str, files: dict[str, str]) -> None:
    """Write ``package`` and a ``<dist>-<version>.dist-info`` the way pip would."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    record = []
    for relative, text in files.items():
        path = site / package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        record.append(f"{package}/{relative},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def manifest(plugin_id: str, entrypoint: str) -> dict:
    return {
        "id": plugin_id,
        "name": "Shout",
        "version": "0.3.1",
        "entrypoint": entrypoint,
        "tools": [SIMPLE_TOOL],
    }


CODE = """
def activate(config):
    return {"echo": lambda arguments, context: arguments["text"].upper() + config.get("suffix", "")}
"""


def test_entry_point_plugin_with_dict_manifest_is_discovered_and_activated(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(
        site,
        "zenthor-shout",
        "0.3.1",
        "zshout",
        "[zenthor.plugins]\nshout = zshout.manifest:MANIFEST\n",
        {
            "__init__.py": "",
            # The manifest module is data only; the tools live in plugin.py, imported at activation.
            "manifest.py": f"MANIFEST = {manifest('shout', 'zshout.plugin:activate')!r}\n",
            "plugin.py": CODE,
        },
    )
    monkeypatch.syspath_prepend(str(site))
    cfg = write_config(tmp_path / "p.toml", '[plugins]\nenabled = ["shout"]\n[config.shout]\nsuffix = "!"\n')
    report = load_plugins(config_path=cfg, plugins_path="")
    record = report.record("shout")
    assert (record.status, record.source, record.version) == ("activated", "entrypoint", "0.3.1")
    assert record.location == "zenthor-shout==0.3.1 (shout = zshout.manifest:MANIFEST)"
    ctx = ToolContext(1, "test", "acct", "chat", "alice", None)
    result = ToolRegistry(report).call("shout_echo", {"text": "hi"}, ctx)
    assert (result.ok, result.content) == (True, "HI!")


def test_entry_point_package_with_json_manifest_is_read_without_importing(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(
        site,
        "zenthor-loud",
        "1.0.0",
        "zloud",
        "[zenthor.plugins]\nloud = zloud\n",
        {
            # Importing the package would raise: discovery must read the JSON from the files.
            "__init__.py": "raise RuntimeError('package imported during discovery')\n",
            "zenthor-plugin.json": json.dumps(manifest("loud", "zloud_impl:activate")),
        },
    )
    (site / "zloud_impl.py").write_text(textwrap.dedent(CODE))
    monkeypatch.syspath_prepend(str(site))
    # Not enabled: discovered and reported, never imported.
    report = load_plugins(config_path=write_config(tmp_path / "a.toml", ""), plugins_path="", persist=False)
    assert report.record("loud").status == "disabled"
    assert report.record("loud").version == "0.3.1"
    report = load_plugins(
        config_path=write_config(tmp_path / "b.toml", '[plugins]\nenabled = ["loud"]\n'), plugins_path=""
    )
    assert report.record("loud").status == "activated"
    assert "loud_echo" in report.tools


def test_entry_point_that_cannot_load_is_invalid(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(
        site,
        "zenthor-broken",
        "0.1.0",
        "zbroken",
        "[zenthor.plugins]\nbroken = zbroken.manifest:MANIFEST\nlisty = zbroken.listy:MANIFEST\n",
        {
            "__init__.py": "",
            "manifest.py": "import does_not_exist\n",
            "listy.py": "MANIFEST = ['not', 'a', 'dict']\n",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    report = load_plugins(config_path=write_config(tmp_path / "c.toml", ""), plugins_path="", persist=False)
    broken = report.record("entrypoint:broken")
    assert broken.status == "invalid"
    assert broken.diagnostics[0].path == "entry_point"
    assert "ModuleNotFoundError" in broken.diagnostics[0].message
    listy = report.record("entrypoint:listy")
    assert "is a list, not a manifest" in listy.diagnostics[0].message
    assert all(report.record(b).status == "activated" for b in ("core-time", "core-memory", "core-schedule"))
