"""The CSV's timestamps: from PostgreSQL's ISO text (the spool) to ISO 8601 (the file), and
the check that every written cell reads back as the stored instant.

In UTC (the default) the spool's text ends "+00" and the file writes "Z". With a
request's time zone the extraction has PostgreSQL write local times with their offset
("2026-11-16 04:49:55-05", "...+05:30", historic "+00:09:21") and the file writes ISO
8601's offset form: `2026-11-16T04:49:55-05:00`, `+05:30`, `+00:09:21` (seconds only where
the zone's offset had them, before standard time).

The file writes `2026-11-16T09:49:55Z`, with fractional seconds when the value has them
(`09:49:55.123456Z`, trailing zeros dropped); years 0000-9999 as four digits, others in
ISO 8601's expanded form with a sign, in astronomical numbering (1 BC is year 0000, 44 BC
is `-0043`, `+12026`); `infinity` and `-infinity` as those words. Python's datetime holds
years 1-9999 only (and psycopg2 reads infinity as datetime.max), so values stay text from
COPY to the file: the usual ones (years 1-9999) are rewritten by two byte-slice
replacements in Arrow, the others, few, in Python.
"""

from __future__ import annotations

import calendar
import re

import pyarrow as pa
import pyarrow.compute as pc

INFINITIES = ("infinity", "-infinity")
# PostgreSQL's output with DateStyle ISO in UTC: "2026-11-16 09:49:55[.123]+00", the year
# in four or more digits, " BC" after years before 1 AD.
SPOOL_UTC = "+00"
_SPOOL_PATTERN = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    r"([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?( BC)?",
    re.ASCII,
)
# The file's form, as the check reads it back.
_ISO_PATTERN = re.compile(
    r"([+-]?)(\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    r"(?:Z|([+-])(\d\d):(\d\d)(?::(\d\d))?)",
    re.ASCII,
)
# A usual zone cell: "+05" becomes "+05:00"; "+05:30" stays.
_HOUR_OFFSET_AT_END = r"([+-]\d\d)$"
_TO_END = 2**31 - 1  # a slice end past any cell


class TimestampMismatch(ValueError):
    """A timestamp cell would not read back as the instant the database holds."""


# A timestamp's fields: (astronomical year, month, day, hour, minute, second, microsecond,
# UTC offset in seconds), or one of INFINITIES.
Fields = tuple[int, int, int, int, int, int, int, int] | str


def _microseconds(digits: str | None) -> int:
    return int((digits or "").ljust(6, "0"))


def _offset_seconds(sign: str, hours: str, minutes: str | None, seconds: str | None) -> int:
    total = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return -total if sign == "-" else total


def spool_fields(text: str) -> Fields:
    """The fields of PostgreSQL's ISO text for a timestamp (with its zone's offset)."""
    if text in INFINITIES:
        return text
    match = _SPOOL_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not PostgreSQL's ISO text of a timestamp")
    year = int(match[1])
    if match[12]:  # "0044 ... BC": 1 BC is year 0
        year = 1 - year
    return (
        year,
        *(int(match[n]) for n in range(2, 7)),
        _microseconds(match[7]),
        _offset_seconds(match[8], match[9], match[10], match[11]),
    )


def iso_year(year: int) -> str:
    """Four digits for 0000-9999; ISO 8601's expanded form, with a sign, for the others."""
    if 0 <= year <= 9999:
        return f"{year:04d}"
    return f"{'+' if year > 0 else '-'}{abs(year):04d}"


def iso_offset(seconds: int, utc: bool = True) -> str:
    """ "Z" in UTC; otherwise "+HH:MM", with ":SS" when the offset has seconds."""
    if utc and seconds == 0:
        return "Z"
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def iso_from_fields(fields: Fields, utc: bool = True) -> str:
    if isinstance(fields, str):
        return fields
    year, month, day, hour, minute, second, microsecond, offset = fields
    fraction = f".{microsecond:06d}".rstrip("0") if microsecond else ""
    return (
        f"{iso_year(year)}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}"
        + iso_offset(offset, utc)
    )


def iso_from_spool(text: str, utc: bool = True) -> str:
    """One spool cell in the file's form (the unusual ones take this way)."""
    return iso_from_fields(spool_fields(text), utc)


def _days_in_month(year: int, month: int) -> int:
    # Proleptic Gregorian: calendar.isleap holds for year 0 and negative years too.
    if month == 2:
        return 29 if calendar.isleap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def read_iso(cell: str) -> Fields:
    """A file cell's fields; ValueError unless it is the file's form of a real instant."""
    if cell in INFINITIES:
        return cell
    match = _ISO_PATTERN.fullmatch(cell)
    if match is None:
        raise ValueError(f"{cell!r} is not an ISO 8601 timestamp")
    sign, digits = match[1], match[2]
    year = -int(digits) if sign == "-" else int(digits)
    # One way to write each year: unsigned exactly for 0000-9999, no leading zeros past four.
    if (sign == "") != (0 <= year <= 9999) or (len(digits) > 4 and digits.startswith("0")):
        raise ValueError(f"{cell!r} does not write its year in ISO 8601's form")
    month, day, hour, minute, second = (int(match[n]) for n in range(3, 8))
    if not (
        1 <= month <= 12
        and 1 <= day <= _days_in_month(year, month)
        and hour <= 23
        and minute <= 59
        and second <= 59
    ):
        raise ValueError(f"{cell!r} is not a date and time of day")
    offset = 0 if match[9] is None else _offset_seconds(*match.group(9, 10, 11, 12))
    return (year, month, day, hour, minute, second, _microseconds(match[8]), offset)


def usual_spool_cells(spool: pa.Array, utc: bool = True) -> pa.Array:
    """True where a spool cell is a year 1-9999 (its first "-" fifth, no " BC", no infinity),
    NULL where it is NULL."""
    year_1_to_9999 = pc.equal(pc.find_substring(spool, "-"), 4)
    if utc:
        return pc.and_(pc.ends_with(spool, SPOOL_UTC), year_1_to_9999)
    return pc.and_(pc.invert(pc.ends_with(spool, " BC")), year_1_to_9999)


def iso_cells(spool: pa.Array, utc: bool = True) -> pa.Array:
    """A spool column's timestamps in the file's form ("Z" in UTC, else the zone's offset).
    Timestamps are ASCII, so the byte slice kernels serve (several times faster than the
    UTF-8 ones)."""
    if utc:
        cells = pc.binary_replace_slice(spool, -len(SPOOL_UTC), _TO_END, "Z")
        cells = pc.binary_replace_slice(cells, 10, 11, "T")
    else:
        cells = pc.binary_replace_slice(spool, 10, 11, "T")
        cells = pc.replace_substring_regex(cells, _HOUR_OFFSET_AT_END, r"\1:00")
    unusual = pc.invert(pc.fill_null(usual_spool_cells(spool, utc), True))
    if pc.any(unusual).as_py():
        texts = pc.filter(spool, unusual).to_pylist()
        cells = pc.replace_with_mask(
            cells, unusual, pa.array([iso_from_spool(text, utc) for text in texts], pa.string())
        )
    return cells


def _expected_usual_cells(spool: pa.Array, utc: bool) -> pa.Array:
    """The usual cells' file form, worked out another way than iso_cells does."""
    if utc:
        return pc.binary_replace_slice(
            pc.binary_replace_slice(spool, 10, 11, "T"), -len(SPOOL_UTC), _TO_END, "Z"
        )
    hours_only = pc.replace_substring_regex(
        spool, r"^(\d{4}-\d\d-\d\d) ([0-9:.]+)([+-]\d\d)$", r"\1T\2\3:00"
    )
    return pc.replace_substring_regex(hours_only, r"^(\d{4}-\d\d-\d\d) ([0-9:.+-]+)$", r"\1T\2")


def check_cells(
    spool: pa.Array, cells: pa.Array, contact_ids: pa.Array, column: str, utc: bool = True
) -> None:
    """Raise TimestampMismatch, naming the first contact and the column, unless every cell
    is NULL where the spool's is and otherwise reads back as the spool's instant.

    A usual value's PostgreSQL text already is its ISO 8601 form but for the "T" and the
    "Z" (or the offset's minutes): its cell must be exactly that text (compared in Arrow, a
    few ms per 100,000 rows). The others are parsed back (read_iso) and compared field by
    field in Python.
    """
    usual = pc.fill_null(usual_spool_cells(spool, utc), False)
    expected = _expected_usual_cells(spool, utc)
    passed = (
        pc.all(pc.equal(pc.is_null(spool), pc.is_null(cells))).as_py()
        and pc.all(pc.or_(pc.invert(usual), pc.equal(expected, cells))).as_py()
    )
    if passed:  # only the unusual cells are left
        to_check = pc.and_(pc.invert(usual), pc.is_valid(spool))
    else:  # Python finds which cell failed (never on the common path)
        to_check = pa.array([True] * len(spool))
    if not pc.any(to_check).as_py():
        return
    spool_texts = pc.filter(spool, to_check).to_pylist()
    cell_texts = pc.filter(cells, to_check).to_pylist()
    for index, stored, cell in zip(
        pc.indices_nonzero(to_check).to_pylist(), spool_texts, cell_texts, strict=True
    ):
        if not _reads_back(stored, cell, utc):
            raise TimestampMismatch(
                f"contact {contact_ids[index].as_py()}: {column} {stored!r} would be written "
                f"as {cell!r}, which does not read back as that instant in ISO 8601 "
                + ("UTC" if utc else "with its offset")
            )


def _reads_back(stored: str | None, cell: str | None, utc: bool = True) -> bool:
    if stored is None or cell is None:
        return stored is cell
    if utc != cell.endswith("Z") and cell not in INFINITIES:
        return False  # UTC writes Z, a zone its offset
    try:
        return read_iso(cell) == spool_fields(stored)
    except ValueError:
        return False
