"""The config file: defaults, resolved paths, discovery order, and errors that help."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fakes import toml_value, write_config

from mirror.config import ENV_VAR, REQUIRED, SETTINGS, SourceConfig, load_config
from mirror.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FILE = REPO / "config.example.toml"
VALID_SOURCE = {"name": "eso", "url": "https://archive.eso.org/tap_obs"}
SECTIONS = sorted({s.section for s in SETTINGS})
_FRAGMENT = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|true|false|[-+0-9.eE]+)")


def write(tmp_path: Path, text: str, name: str = "mirror.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_with(tmp_path: Path, section: str, key: str, value_toml: str) -> Path:
    """A minimal valid config with `key = value_toml` set in `section`."""
    src = {k: toml_value(v) for k, v in VALID_SOURCE.items()}
    lines = []
    if section == "source":
        src[key] = value_toml
    else:
        lines += [f"[{section}]", f"{key} = {value_toml}", ""]
    lines += ["[[source]]", *(f"{k} = {v}" for k, v in src.items())]
    return write(tmp_path, "\n".join(lines) + "\n", name=f"example-{section}-{key}.toml")


def valid_examples(hint: str | None, section: str, tmp_path: Path) -> list[str]:
    """The examples in a hint that a config file really accepts: `key = value` fragments of
    `section`, or a whole example file after the hint's first line."""
    if not hint:
        return []
    keys = {s.name for s in SETTINGS if s.section == section}
    good = []
    for m in _FRAGMENT.finditer(hint):
        key, value = m.group(1), m.group(2)
        if key not in keys:
            continue
        try:
            tomllib.loads(f"{key} = {value}")
            load_config(config_with(tmp_path, section, key, value))
        except (tomllib.TOMLDecodeError, ConfigError):
            continue
        good.append(m.group(0))
    if "\n" in hint:
        block = hint.split("\n", 1)[1]
        try:
            load_config(write(tmp_path, block, name="example-block.toml"))
            good.append(block)
        except ConfigError:
            pass
    return good


def raises_config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def source_block(**values: Any) -> str:
    return "[[source]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


# -- a valid file ------------------------------------------------------------------------------


def test_minimal_file_loads_with_every_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, source_block(**VALID_SOURCE)))
    [src] = cfg.sources
    for setting in SETTINGS:
        if setting.section != "source":
            continue
        expected = VALID_SOURCE[setting.name] if setting.default is REQUIRED else setting.default
        assert getattr(src, setting.name) == expected, setting.key
    defaults = {s.key: s.default for s in SETTINGS}
    assert cfg.catalogue_path == (tmp_path / defaults["catalogue.path"]).resolve()
    assert cfg.store_root == (tmp_path / defaults["store.root"]).resolve()
    assert cfg.file == (tmp_path / "mirror.toml").resolve()


def test_paths_are_relative_to_the_config_file_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "mirror"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write_config(conf_dir, VALID_SOURCE, catalogue="db/cat.duckdb", store="../files")
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.catalogue_path == conf_dir / "db" / "cat.duckdb"
    assert cfg.store_root == tmp_path / "etc" / "files"


def test_values_given_override_defaults(tmp_path: Path) -> None:
    given = {**VALID_SOURCE, "table": "ivoa.ObsCore", "where": "obs_collection = 'HARPS'",
             "watermark": "", "page_size": 500, "mode": "async", "max_withdrawals": 0,
             "timeout": 5, "retries": 2}
    [src] = load_config(write(tmp_path, source_block(**given))).sources
    for key, value in given.items():
        assert getattr(src, key) == value, key
    assert isinstance(src.timeout, float)


def test_several_sources_keep_their_order(tmp_path: Path) -> None:
    text = source_block(name="a", url="http://a.example/tap") + source_block(
        name="b", url="https://b.example/tap")
    cfg = load_config(write(tmp_path, text))
    assert [s.name for s in cfg.sources] == ["a", "b"]
    assert cfg.source("b").url == "https://b.example/tap"
    with pytest.raises(ConfigError) as info:
        cfg.source("c")
    assert "'c'" in info.value.message and "a, b" in (info.value.hint or "")


def test_token_is_read_from_the_environment_at_use(monkeypatch: pytest.MonkeyPatch) -> None:
    src = SourceConfig(name="eso", url="https://x.example/tap", token_env="MIRROR_TEST_TOKEN")
    monkeypatch.delenv("MIRROR_TEST_TOKEN", raising=False)
    assert src.token() is None
    monkeypatch.setenv("MIRROR_TEST_TOKEN", "tok-123")
    assert src.token() == "tok-123"
    assert "tok-123" not in repr(src)
    assert SourceConfig(name="eso", url="https://x.example/tap").token() is None


# -- errors name the file and the key, and show a valid example --------------------------------

BAD_SOURCES = {
    # case: (source values, words the message must contain, section of the example)
    "unknown key": ({**VALID_SOURCE, "page-size": 5}, ["source.page-size"]),
    "wrong type": ({**VALID_SOURCE, "page_size": "big"}, ["source.page_size", "'big'"]),
    "bool for int": ({**VALID_SOURCE, "retries": True}, ["source.retries"]),
    "float for int": ({**VALID_SOURCE, "max_withdrawals": 2.5}, ["source.max_withdrawals"]),
    "zero page size": ({**VALID_SOURCE, "page_size": 0}, ["source.page_size"]),
    "negative withdrawals": ({**VALID_SOURCE, "max_withdrawals": -1},
                             ["source.max_withdrawals"]),
    "missing name": ({"url": VALID_SOURCE["url"]}, ["[source]", "'name'"]),
    "missing url": ({"name": "eso"}, ["[source]", "'url'"]),
    "bad source name": ({**VALID_SOURCE, "name": "2-fast"}, ["source.name", "'2-fast'"]),
    "name with space": ({**VALID_SOURCE, "name": "my archive"}, ["source.name"]),
    "non-http url": ({**VALID_SOURCE, "url": "ftp://archive.example/tap"},
                     ["source.url", "ftp://archive.example/tap"]),
    "bad mode": ({**VALID_SOURCE, "mode": "turbo"}, ["source.mode", "'turbo'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_source_value_names_file_and_key_with_a_valid_example(tmp_path: Path,
                                                                  case: str) -> None:
    values, words = BAD_SOURCES[case]
    path = write(tmp_path, source_block(**values))
    err = raises_config_error(path)
    assert str(path) in err.message
    for word in words:
        assert word in err.message
    assert valid_examples(err.hint, "source", tmp_path), f"no valid example in {err.hint!r}"


def test_duplicate_source_names_are_refused_with_a_valid_example(tmp_path: Path) -> None:
    path = write(tmp_path, source_block(**VALID_SOURCE) + source_block(
        name="eso", url="https://other.example/tap"))
    err = raises_config_error(path)
    assert str(path) in err.message and "'eso'" in err.message
    assert valid_examples(err.hint, "source", tmp_path), f"no valid example in {err.hint!r}"


def test_wrong_type_in_catalogue_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[catalogue]\npath = 5\n" + source_block(**VALID_SOURCE))
    err = raises_config_error(path)
    assert str(path) in err.message and "catalogue.path" in err.message
    assert valid_examples(err.hint, "catalogue", tmp_path)


def test_section_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'catalogue = "x.duckdb"\n' + source_block(**VALID_SOURCE))
    err = raises_config_error(path)
    assert str(path) in err.message and "[catalogue]" in err.message
    assert valid_examples(err.hint, "catalogue", tmp_path)


def test_source_written_as_single_table_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\nname = "eso"\nurl = "https://x.example/tap"\n')
    err = raises_config_error(path)
    assert str(path) in err.message and "[[source]]" in err.message
    assert valid_examples(err.hint, "source", tmp_path)


def test_unknown_section_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "[sources]\nname = 'eso'\n")
    err = raises_config_error(path)
    assert str(path) in err.message and "[sources]" in err.message
    for section in SECTIONS:
        assert f"[{section}]" in (err.hint or ""), section


def test_bad_toml_names_the_file_and_shows_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[source]]\nname = "eso\nurl = 5\n')
    err = raises_config_error(path)
    assert str(path) in err.message and "TOML" in err.message
    assert valid_examples(err.hint, "source", tmp_path)


def test_missing_file_is_named_with_the_ways_to_give_one(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "mirror.toml"
    err = raises_config_error(path)
    assert str(path) in err.message
    assert ENV_VAR in (err.hint or "") and "config.example.toml" in (err.hint or "")


def test_config_error_text_carries_the_hint(tmp_path: Path) -> None:
    err = raises_config_error(write(tmp_path, source_block(**{**VALID_SOURCE, "mode": "x"})))
    assert str(err) == f"{err.message}\n  hint: {err.hint}"


# -- discovery: --config, then $MIRROR_CONFIG, then ./mirror.toml --------------------------------


@pytest.fixture
def three_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    paths = {}
    for where in ("explicit", "env", "cwd"):
        d = tmp_path / where
        d.mkdir()
        paths[where] = write_config(d, {"name": where, "url": "http://127.0.0.1:9/tap"})
    monkeypatch.chdir(paths["cwd"].parent)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return paths


def test_explicit_path_wins_over_environment_and_working_directory(
        three_configs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(three_configs["env"]))
    assert load_config(three_configs["explicit"]).sources[0].name == "explicit"


def test_environment_wins_over_working_directory(three_configs: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(three_configs["env"]))
    cfg = load_config()
    assert cfg.sources[0].name == "env"
    assert cfg.file == three_configs["env"].resolve()


def test_working_directory_mirror_toml_is_the_last_resort(
        three_configs: dict[str, Path]) -> None:
    cfg = load_config()
    assert cfg.sources[0].name == "cwd"
    assert cfg.file == three_configs["cwd"].resolve()


def test_no_config_anywhere_says_how_to_give_one(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "mirror.toml" in info.value.message
    assert "--config" in (info.value.hint or "") and ENV_VAR in (info.value.hint or "")


def test_environment_pointing_nowhere_is_an_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "gone.toml"
    monkeypatch.setenv(ENV_VAR, str(missing))
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, VALID_SOURCE)  # ./mirror.toml exists, but $MIRROR_CONFIG wins
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(missing) in info.value.message


# -- config.example.toml documents every setting -------------------------------------------------


def test_example_file_loads() -> None:
    cfg = load_config(EXAMPLE_FILE)
    assert cfg.sources, "the example should show a [[source]]"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_appears_in_the_example_under_its_section(setting: Any) -> None:
    data = tomllib.loads(EXAMPLE_FILE.read_text(encoding="utf-8"))
    section = data.get(setting.section)
    assert section is not None, f"config.example.toml has no [{setting.section}]"
    table = section[0] if isinstance(section, list) else section
    assert setting.name in table, f"{setting.key} is not shown in config.example.toml"
    line = re.compile(rf"^{re.escape(setting.name)}\s*=", re.M)
    assert line.search(EXAMPLE_FILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_example_is_itself_valid(setting: Any, tmp_path: Path) -> None:
    key, _, value = setting.example.partition("=")
    assert key.strip() == setting.name
    load_config(config_with(tmp_path, setting.section, setting.name, value.strip()))


def test_memory_limit_must_be_a_size(tmp_path: Path) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text('[catalogue]\nmemory_limit = "lots"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert "memory_limit" in caught.value.message and "lots" in caught.value.message
    assert "512MB" in (caught.value.hint or "")
    config.write_text('[catalogue]\nmemory_limit = "512MB"\n', encoding="utf-8")
    assert load_config(config).memory_limit == "512MB"


@pytest.mark.parametrize("url", ["ftp://mirror.example.org/tap", "mirror.example.org/tap",
                                 "https://mirror.example.org/tap?x=1", "https:///tap"])
def test_a_public_url_that_is_not_an_http_base_is_refused_with_an_example(
        tmp_path: Path, url: str) -> None:
    error = raises_config_error(config_with(tmp_path, "serve", "public_url", toml_value(url)))
    assert "serve.public_url" in error.message and url in error.message
    assert valid_examples(error.hint, "serve", tmp_path)
    ok = load_config(config_with(tmp_path, "serve", "public_url",
                                 toml_value("https://mirror.example.org/tap/")))
    assert ok.serve.public_url == "https://mirror.example.org/tap/"
