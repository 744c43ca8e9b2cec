"""Every text key a console template asks for is in the catalogue, in both languages, and every
placeholder a text has is the same in 中文 and English (a missing key would show as itself)."""

from __future__ import annotations

import importlib
import re
import string
from pathlib import Path

import tillroll.console
from tillroll.console.app import ROUTER_MODULES
from tillroll.console.i18n import CATALOGUE

TEMPLATES = Path(tillroll.console.__file__).parent / "templates"
_KEY = re.compile(r"""\bt\(\s*'([a-z_]+\.[a-z_.]+)'""")


def _load() -> None:
    for name in ROUTER_MODULES:  # the pages register their texts at import
        importlib.import_module(name)


def test_every_literal_key_in_the_templates_is_in_the_catalogue() -> None:
    _load()
    used = {
        key for path in TEMPLATES.glob("*.html") for key in _KEY.findall(path.read_text(encoding="utf-8"))
    }
    assert used, "no t('...') found: the pattern no longer matches the templates"
    assert sorted(used - CATALOGUE.keys()) == []


def test_both_languages_have_the_same_placeholders() -> None:
    _load()
    fields = string.Formatter()
    for key, (zh, en) in CATALOGUE.items():
        assert zh.strip() and en.strip(), key
        names_zh = {f for _, f, _, _ in fields.parse(zh) if f}
        names_en = {f for _, f, _, _ in fields.parse(en) if f}
        assert {n.split(":")[0] for n in names_zh} == {n.split(":")[0] for n in names_en}, key
