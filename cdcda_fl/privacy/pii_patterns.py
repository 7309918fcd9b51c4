"""The PII patterns the scrubber proposes spans with (:mod:`cdcda_fl.privacy.recognizers` lists
them in priority order; :mod:`cdcda_fl.privacy.pii_checks` validates what they find).

Every pattern runs on folded text (:mod:`cdcda_fl.privacy.unifold`: lower case, no accents, no
invisible characters). Repeats are bounded ({1,8} labels, 64-character local parts) so that no
pattern is quadratic on long runs such as "a.a.a.a..." or "12-12-12-..." (a record is at most a
few KB, but a crafted one should not stall the device).
"""

from __future__ import annotations

import re

_TLDS = (
    "com|org|net|edu|gov|io|co|ai|app|dev|info|biz|me|ly|tv|us|uk|de|fr|nl|eu|ca|au|in|jp|cn|ru|"
    "br|es|it|ch|se|no|fi|pl|be|at|dk|nz|ie|kr|gl|gg|to|fm|tk|xyz|site|online"
)

URL_RE = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']+", re.IGNORECASE)  # scheme:// or www.
BARE_URL_RE = re.compile(  # example.com/path, bit.ly/xyz
    r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}(?:" + _TLDS + r")\b(?:/[^\s<>\"']*)?",
    re.IGNORECASE,
)
EMAIL_RE = re.compile(
    r"\b[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}[a-z]{2,24}\b",
    re.IGNORECASE,
)
# Addresses in other scripts (用户@例子.中国): folding already turns accented Latin into ASCII.
EMAIL_IDN_RE = re.compile(r"(?<![\w.%+-])[\w][\w.%+-]{0,63}@(?:[\w-]{1,63}\.){1,8}[^\W\d_]{2,24}(?!\w)")
# Also catches obfuscated addresses such as "jane at example dot com".
_AT = r"\s*(?:\[at\]|\(at\)|\sat\s)\s*"
_DOT = r"\s*(?:\[dot\]|\(dot\)|\sdot\s)\s*"
EMAIL_OBFUSCATED_RE = re.compile(  # local part and domain may be "tom dot baker", "mail dot co dot uk"
    # (bounded repeats: linear time on long runs such as "a dot a dot ..." or "12-12-12-...")
    r"\b[a-z0-9._%+-]{1,64}(?:" + _DOT + r"[a-z0-9._%+-]{1,64}){0,4}" + _AT
    + r"[a-z0-9-]{1,63}(?:" + _DOT + r"[a-z0-9-]{1,63}){0,4}" + _DOT + r"(?:" + _TLDS + r")\b",
    re.IGNORECASE,
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}(?:" + _OCTET + r"(?:\." + _OCTET + r"){3}|[0-9a-f]{1,4})?"
                     r"(?![\w:]|\.\d)", re.IGNORECASE)  # the dotted-quad tail first: ::ffff:192.0.2.128
MAC_RE = re.compile(r"(?<![\w:-])[0-9a-f]{2}(?:([:-])[0-9a-f]{2})(?:\1[0-9a-f]{2}){4}(?![\w:-])", re.IGNORECASE)
MAC_DOTTED_RE = re.compile(r"(?<![\w.])[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}(?![\w]|\.\w)", re.IGNORECASE)  # Cisco
IBAN_RE = re.compile(r"(?<!\w)[a-z]{2}\d{2}(?:[a-z0-9]{11,30}|(?: [a-z0-9]{4}){2,7}(?: [a-z0-9]{1,4})?)(?!\w)",
                     re.IGNORECASE)
CARD_RE = re.compile(r"(?<![\w])\d(?:[ -]?\d){12,18}(?![\w])")
SSN_RE = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")  # US social security number: 536-90-4399
UK_NINO_RE = re.compile(r"(?<!\w)[a-ceghj-pr-tw-z][a-ceghj-npr-tw-z] ?\d{2} ?\d{2} ?\d{2} ?[a-d](?!\w)", re.IGNORECASE)
NINO_NEVER = {"bg", "gb", "kn", "nk", "nt", "tn", "zz"}  # prefixes HMRC never issues
# Dates only where the text says they are a birth date (other dates are ordinary content): a cue
# ("born", "b.", "DOB", "birthday", "né le", "geboren am", "nato il", "nacida el"), at most three
# filler words ("is", "was", "on", "in", "the", ":"), then a date -- numeric, with a day, or a month
# and a year ("born in March 1985"; a bare year, "born in 1990", stays).
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_DOB_CUE = (r"\b(?=[bdgn])(?:born|b\.|d\.?o\.?b\.?|date of birth|birth ?date|birthday"
            r"|nee?\s+le|geboren(?:\s+am)?|nat[oa]\s+il|nacid[oa]\s+el)")
DOB_RE = re.compile(
    _DOB_CUE + r"(?:\s*[:\-]|\s+(?:is|was|on|in|the)\b){0,3}\s*"
    r"(\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,2}(?:st|nd|rd|th)?\.?\s+(?:of\s+)?[a-z]{3,9}\.?,?\s+\d{2,4}"
    r"|[a-z]{3,9}\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}|" + _MONTH + r"\s+\d{4})(?!\w)",
    re.IGNORECASE,
)
# National ids that carry a check letter (validated by python-stdnum): Spanish DNI (8 digits and
# a letter) and NIE (X/Y/Z, 7 digits, a letter); the Italian codice fiscale (16 characters; digits
# may be replaced by letters L-V when two people would get the same code).
ES_DNI_RE = re.compile(r"(?<![\w-])(?:\d{8}|[xyz]-?\d{7})-?[a-z](?![\w-])")
_CF_DIGIT = r"[\dlmnp-v]"
IT_CF_RE = re.compile(r"(?<!\w)[a-z]{6}" + _CF_DIGIT + r"{2}[a-ehlmprst]" + _CF_DIGIT + r"{2}[a-z]" + _CF_DIGIT + r"{3}[a-z](?!\w)")
# Passport numbers have no common format or checksum: 6-9 letters and digits (at least one digit)
# where the text calls them a passport number, in a few languages.
PASSPORT_RE = re.compile(
    r"\b(?:passport|passeport|pasaporte|passaporto|reisepass|paspoort)"
    r"(?:[\s:#.\-]*(?:no|nr|number|num|numero|n°|#|id)\b\.?)?[\s:#.\-]*((?=[a-z]*\d)[a-z0-9]{6,9})(?![\w-])"
)
# A MAC address written without separators: 12 hex digits, at least one of them a letter and one a
# digit (a plain 12-digit number is an account number, a 12-letter word a word).
MAC_BARE_RE = re.compile(r"(?<![\w:.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{12}(?![\w:.-])")
# ... unless the text calls it a commit, hash or revision (a short git hash is 7-12 hex digits).
HASH_BEFORE_RE = re.compile(r"(?:\bcommit|\bsha1?|\bhash|\brev(?:ision)?|\bbuild|\bchangeset|#)\s*[:#]?\s*$")
HANDLE_RE = re.compile(r"(?<![\w@.])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])\b")  # @kate.w, not its full stop
# "@name" that is code, not a person: Python decorators, Java/C# annotations, CSS at-rules, doc
# tags, and the group mentions of chat apps ("@here"). A handle followed by "(" is a call anyway.
NOT_HANDLES = frozenset({
    "property", "staticmethod", "classmethod", "abstractmethod", "cached_property", "dataclass", "override",
    "overload", "final", "wraps", "lru_cache", "cache", "contextmanager", "total_ordering", "singledispatch",
    "pytest", "fixture", "patch", "mock", "jit", "njit", "deprecated", "functools", "typing", "dataclasses",
    "interface", "implementation", "protocol", "end", "synthesize", "import", "media", "keyframes", "charset",
    "supports", "layer", "mixin", "include", "extend", "use", "forward", "param", "return", "returns", "throws",
    "see", "since", "author", "version", "todo", "test", "before", "after", "beforeeach", "aftereach",
    "autowired", "component", "service", "entity", "table", "column", "bean", "configuration", "controller",
    "requestmapping", "getmapping", "postmapping", "suppresswarnings", "nullable", "nonnull", "notnull",
    "input", "output", "injectable", "ngmodule", "everyone", "here", "channel",
})
# Phone: optional +country, optional (area), then 2+ digit groups split by space, dot or dash
# (after a +country code the first group may be one digit: +33 6 12 34 56 78).
PHONE_RE = re.compile(  # never a fragment of a longer dashed/dotted digit string (an ISBN)
    r"(?<![\w+])\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,5}(?:[\s.-]\d{2,8}){1,5}(?!\w|[.-]\d)"
    r"|(?<![\w+])(?<!\d[.-])(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,8}){1,4}(?!\w|[.-]\d)"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
)
# Regions whose national formats phonenumbers looks for (international +CC numbers are found
# whatever the region). Each added region finds more national formats and more false positives:
# IN reads "4 8 15 16 23 42" as a number, DK any 8 digits.
PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR")
# Long digit runs (account numbers, ids), optionally grouped by space/dash: 8 digits or more.
NUMBER_RE = re.compile(r"(?<![\w.,])\d(?:[ -]?\d){7,}(?![\w]|[.,]\d)")
# A number the text calls an account / policy / client number: 6 digits or more, whatever grouping.
ACCOUNT_RE = re.compile(
    r"\b(?:account|acct|a/c|konto\w*|policy|client|customer|member(?:ship)?|contract|invoice)"
    r"(?:\s*(?:no\.?|nr\.?|number|num|#|id|ids))?\s*[:#.]?\s*(\d(?:[ -]?\d){5,})(?![\w]|[.,]\d)"
)
ISO_DATE_RE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
YEAR_RE = re.compile(r"^(?:1[5-9]|20)\d\d$")
YEARISH_RE = re.compile(r"^(?:1[5-9]|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")  # 20190512: a date
THOUSANDS_RE = re.compile(r"^[1-9]\d{0,2}(?:[ \u00a0]\d{3})+$")  # 12 500 000
QUANTITY_AFTER_RE = re.compile(
    r"^\s*(?:[€$£¥%]|(?:euros?|eur|dollars?|usd|pounds?|gbp|yen|francs?|chf|rupees?|people|persons|copies|"
    r"units|users|views|visitors|votes|inhabitants|residents|km|miles|tonnes|tons|kg|years|words|pages|"
    r"times|members|subscribers|followers|downloads)\b)",
)
QUANTITY_BEFORE_RE = re.compile(r"[€$£¥]\s*$")
SMALL_GROUPS_RE = re.compile(r"^[1-9]\d?(?: \d{1,2})+$")  # 4 8 15 16 23 42 (numbers, not a phone)
# Words after which a dotted quad is a version or section number ("patch 1.0.2.3"); kept short,
# since every word here is one after which an IP address would stay ("update", "release" are not).
VERSION_BEFORE_RE = re.compile(r"(?:\bversion|\bver\.?|\bpatch|\bbuild|\bfirmware|\bchapter|\bsection|\bsec\.|§)\s*$")
# Stretches of text a phone number could be in: digits with separators, 7 digits or more (checked
# later). phonenumbers' matcher (about 0.5 ms per stretch and region) runs only on these, plus a
# character of context each side, and only where the own pattern has not already taken the stretch.
PHONE_CANDIDATE_RE = re.compile(r"(?<!\w)\+?\(?\d[\d \t().\-/]{5,40}\d(?!\w)")
# Words that make "x at y dot com" prose rather than an address ("savings at the dot com bubble").
PROSE_WORDS = frozenset({"the", "a", "an", "this", "that", "these", "those", "my", "your", "his", "her", "its",
                         "our", "their", "some", "any", "no", "every", "each", "all", "one", "home", "work",
                         "least", "most", "first", "last", "same", "once", "night", "school", "time"})
# A digit run right after "WORD-" is the tail of an identifier (CVE-2021-44228, RFC-7231), not a phone.
ID_PREFIX_RE = re.compile(r"[a-z]{2,}-$")
