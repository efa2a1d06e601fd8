"""Normalisation of demographic values before comparison and blocking.

Everything is lower-cased, accent-stripped and reduced to the characters that carry identity,
so that "O'Brien", "OBRIEN" and "o brien" compare as equal. Functions return ``""`` for
missing values; the comparison layer treats ``""`` as "null" (no evidence either way).
"""

from __future__ import annotations

import re
import unicodedata

_NON_ALPHA = re.compile(r"[^a-z]+")
_NON_ALNUM_SPACE = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")
_NON_DIGIT = re.compile(r"[^0-9]+")
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]")
_LEADING_NUMBER = re.compile(r"^\s*(\d+[a-z]?)\b\s*(.*)$")

# A short nickname table: enough for the common English diminutives an admission clerk
# types. Maps a nickname to its canonical given name; both sides are compared canonically.
NICKNAMES: dict[str, str] = {
    "bob": "robert",
    "bobby": "robert",
    "rob": "robert",
    "robbie": "robert",
    "bert": "robert",
    "bill": "william",
    "billy": "william",
    "will": "william",
    "willy": "william",
    "liam": "william",
    "jim": "james",
    "jimmy": "james",
    "jamie": "james",
    "mike": "michael",
    "mick": "michael",
    "mickey": "michael",
    "tom": "thomas",
    "tommy": "thomas",
    "dick": "richard",
    "rick": "richard",
    "ricky": "richard",
    "rich": "richard",
    "dave": "david",
    "davy": "david",
    "joe": "joseph",
    "joey": "joseph",
    "jack": "john",
    "johnny": "john",
    "jon": "john",
    "chris": "christopher",
    "kit": "christopher",
    "dan": "daniel",
    "danny": "daniel",
    "steve": "steven",
    "stephen": "steven",
    "tony": "anthony",
    "ed": "edward",
    "eddie": "edward",
    "ted": "edward",
    "ned": "edward",
    "sam": "samuel",
    "matt": "matthew",
    "nick": "nicholas",
    "pete": "peter",
    "andy": "andrew",
    "drew": "andrew",
    "alex": "alexander",
    "sandy": "alexander",
    "ben": "benjamin",
    "greg": "gregory",
    "jeff": "jeffrey",
    "larry": "lawrence",
    "ron": "ronald",
    "ronnie": "ronald",
    "don": "donald",
    "ken": "kenneth",
    "kenny": "kenneth",
    "tim": "timothy",
    "charlie": "charles",
    "chuck": "charles",
    "hank": "henry",
    "harry": "henry",
    "liz": "elizabeth",
    "beth": "elizabeth",
    "betty": "elizabeth",
    "lisa": "elizabeth",
    "eliza": "elizabeth",
    "libby": "elizabeth",
    "kate": "katherine",
    "katie": "katherine",
    "kathy": "katherine",
    "cathy": "katherine",
    "catherine": "katherine",
    "kathryn": "katherine",
    "maggie": "margaret",
    "meg": "margaret",
    "peggy": "margaret",
    "marge": "margaret",
    "sue": "susan",
    "susie": "susan",
    "suzy": "susan",
    "jenny": "jennifer",
    "jen": "jennifer",
    "becky": "rebecca",
    "becca": "rebecca",
    "patty": "patricia",
    "pat": "patricia",
    "trish": "patricia",
    "debbie": "deborah",
    "deb": "deborah",
    "vicky": "victoria",
    "tori": "victoria",
    "abby": "abigail",
    "mandy": "amanda",
    "cindy": "cynthia",
    "sandra": "alexandra",
    "annie": "ann",
    "anne": "ann",
    "anna": "ann",
    "nancy": "ann",
    "molly": "mary",
    "polly": "mary",
    "mae": "mary",
    "sally": "sarah",
    "sara": "sarah",
    "jess": "jessica",
    "jessie": "jessica",
    "steph": "stephanie",
    "val": "valerie",
    "theo": "theodore",
}


def fold(value: str | None) -> str:
    """Lower-case and strip accents (NFKD) — the common first step of every normaliser."""
    if not value:
        return ""
    value = str(value)
    if value.isascii():  # the common case needs no Unicode decomposition
        return value.lower().strip()
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower().strip()


def name(value: str | None) -> str:
    """Letters only: punctuation, digits and spaces inside names are data-entry noise."""
    return _NON_ALPHA.sub("", fold(value))


def canonical_given(value: str) -> str:
    """Nickname → canonical given name (already normalised input)."""
    return NICKNAMES.get(value, value)


def text(value: str | None) -> str:
    """Free text (street, city): letters/digits with single spaces."""
    cleaned = _NON_ALNUM_SPACE.sub(" ", fold(value))
    return _SPACES.sub(" ", cleaned).strip()


def split_address_line(line: str) -> tuple[str, str]:
    """Split a normalised address line into (house number, street text)."""
    match = _LEADING_NUMBER.match(line)
    if match:
        return match.group(1), match.group(2).strip()
    return "", line


def digits(value: str | None) -> str:
    return _NON_DIGIT.sub("", str(value)) if value else ""


def phone(value: str | None) -> str:
    """Digits only, national number: the last 10 digits drop country code prefixes."""
    d = digits(value)
    return d[-10:] if len(d) >= 7 else ""


def postcode(value: str | None) -> str:
    """Alphanumerics, upper-cased; a US ZIP+4 keeps only the 5-digit ZIP."""
    cleaned = _NON_ALNUM.sub("", fold(value)).upper()
    if len(cleaned) == 9 and cleaned.isdigit():
        return cleaned[:5]
    return cleaned


def ssn(value: str | None) -> str:
    """SSN digits; all-zero or obviously dummy values are treated as missing."""
    d = digits(value)
    if not d or set(d) == {"0"} or d in {"123456789", "999999999", "111111111"}:
        return ""
    return d


def birth_date(value: str | None) -> str:
    """ISO date (YYYY-MM-DD, YYYYMMDD, or partial YYYY-MM) → 'YYYYMMDD' ('' if unusable)."""
    if value is None:
        return ""
    d = digits(str(value).strip()[:10])
    if len(d) == 8:
        return d
    if len(d) == 6:  # YYYY-MM: unknown day as 00 keeps year/month comparable
        return d + "00"
    if len(d) == 4:
        return d + "0000"
    return ""


def sex(value: str | None) -> str:
    """FHIR gender / HL7 administrative sex → 'm' | 'f' | 'o' | '' (unknown is missing)."""
    v = fold(value)
    if v in {"m", "male", "man"}:
        return "m"
    if v in {"f", "female", "woman"}:
        return "f"
    if v in {"o", "other", "x", "a"}:
        return "o"
    return ""
