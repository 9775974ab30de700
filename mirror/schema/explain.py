"""Units and UCDs in words, from what astropy knows (VOUnit parsing, the UCD1+ word list)."""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # astropy.units loads when a unit is explained, not with every command
    import astropy.units as u
    from astropy.io.votable.ucd import UCDWords

# secondary UCD words that read as an adjective before the primary quantity
_QUALIFIERS = {
    "stat.min": "minimum", "stat.max": "maximum", "stat.mean": "mean", "stat.median": "median",
    "stat.error": "error of the", "stat.stdev": "standard deviation of the",
    "stat.fit": "fitted", "meta.main": "main", "stat.uncalib": "uncalibrated",
    "meta.ref": "reference to the",
}
_POWERS = {2: "square ", 3: "cubic "}
_SPELLING = {"meter": "metre", "liter": "litre"}
_NAMES = {"mag": "magnitude", "%": "percent", "pct": "percent", "ct": "count", "pix": "pixel"}


@functools.cache
def _words() -> UCDWords:
    from astropy.io.votable.ucd import UCDWords

    return UCDWords()


def ucd_words(ucd: str | None) -> list[tuple[str, str | None]]:
    """Each word of a UCD with the UCD1+ description (None for a word astropy doesn't know)."""
    out: list[tuple[str, str | None]] = []
    for word in (w.strip() for w in (ucd or "").split(";")):
        if not word:
            continue
        try:
            out.append((word, _words().get_description(word)))
        except KeyError:
            out.append((word, None))
    return out


def explain_ucd(ucd: str | None) -> str | None:
    """A short phrase: `em.wl;stat.min` -> 'minimum wavelength'."""
    words = ucd_words(ucd)
    if not words or words[0][1] is None:
        return None
    phrase = _short(words[0][1])
    extras = []
    for word, text in words[1:]:
        if word.lower() in _QUALIFIERS:
            phrase = f"{_QUALIFIERS[word.lower()]} {phrase}"
        elif text:
            extras.append(text[0].lower() + text[1:])
    return phrase + (f" ({'; '.join(extras)})" if extras else "")


def _short(description: str) -> str:
    """'Wavelength value in the em frame' -> 'wavelength'."""
    text = description
    for cut in (" value in the ", " in the em frame"):
        text = text.split(cut)[0]
    return text[0].lower() + text[1:] if text[1:2].islower() else text


@functools.cache
def parse_unit(unit: str | None) -> u.UnitBase | None:
    """The unit as astropy reads it (VOUnit first, then its generic syntax), or None."""
    if not unit or not unit.strip():
        return None
    import astropy.units as u

    for fmt in ("vounit", "generic", "cds"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                parsed = u.Unit(unit.strip(), format=fmt)
            except (ValueError, TypeError):
                continue
        if not isinstance(parsed, u.UnrecognizedUnit):
            return parsed
    return None


def explain_unit(unit: str | None) -> str | None:
    """The unit in words with its physical type: `km/s` -> 'kilometre per second (speed)'."""
    parsed = parse_unit(unit)
    if parsed is None:
        return None
    words = _unit_words(parsed)
    kind = str(parsed.physical_type)
    if kind in ("unknown", "dimensionless"):
        return words or None
    return f"{words} ({kind})" if words else kind


def _unit_words(unit: u.UnitBase) -> str:
    import astropy.units as u

    scale = "" if unit.scale == 1 else f"{unit.scale:g} "
    if not isinstance(unit, u.CompositeUnit) or len(unit.bases) == 0:
        return scale + _name(unit)
    if len(unit.bases) == 1 and unit.powers[0] == 1:
        return scale + _name(unit.bases[0])
    up: list[str] = []
    down: list[str] = []
    for base, power in zip(unit.bases, unit.powers, strict=True):
        text = _POWERS.get(abs(int(power)), "") + _name(base) if power == int(power) else (
            f"{_name(base)}^{abs(power)}")
        if abs(power) > 3 and power == int(power):
            text = f"{_name(base)}^{abs(int(power))}"
        (up if power > 0 else down).append(text)
    words = " ".join(up) or "1"
    return scale + words + "".join(f" per {d}" for d in down)


def _name(unit: u.UnitBase) -> str:
    names = [n for n in getattr(unit, "long_names", []) if n.isascii() and n.isalpha()]
    names.sort(key=lambda n: (not n.islower(), -len(n)))  # 'angstrom' before 'AA'
    name = names[0] if names else _NAMES.get(unit.to_string(), unit.to_string())
    name = name[0].lower() + name[1:] if name[:1].isupper() and name[1:2].islower() else name
    for us, uk in _SPELLING.items():
        name = name.replace(us, uk)
    return name
