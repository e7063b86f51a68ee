"""A Presidio recognizer for street and postal addresses ("1234 Abc Avenue, Springfield").

Presidio ships no street-address recognizer; its NER models tag cities and countries as
LOCATION, which is far weaker evidence than a house number on a named street. The main
patterns are US-style (house number, street name, street type, optional unit and city);
smaller ones cover US postal boxes and military addresses, and the common European forms
("Augsburger Strasse 36", "Hammarvägen 15", "Rua do Arenque 1634").

The patterns are linear-time: every repetition is bounded, and no repeated group can match
the same characters in two ways (words are separated by mandatory whitespace and start
with a fixed character class), so a hostile prompt cannot make the regex engine backtrack
exponentially. They are compiled by Presidio with the ``regex`` module, so ``\\p{Lu}``
(an upper-case letter in any script) is available.
"""

from __future__ import annotations

from presidio_analyzer import Pattern, PatternRecognizer

_UPPER = r"\p{Lu}"
_LOWER = r"[\p{Ll}']"
_WORD = _UPPER + _LOWER + "+"  # a capitalised word: "Main", "Årpád"

# US street types, matched case-insensitively ("Street", "street", "ST"), optional dot.
_SUFFIX = (
    r"(?i:street|st|avenue|ave|av|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl"
    r"|terrace|ter|way|parkway|pkwy|circle|cir|highway|hwy|square|sq|trail|trl|plaza|plz"
    r"|crescent|alley|expressway|freeway|turnpike|pike)\b\.?"
)
# Street types that are rarely anything else, for the all-lowercase variant.
_DISTINCT_SUFFIX = r"(?i:street|avenue|ave|boulevard|blvd|parkway|pkwy|highway|hwy)\b\.?"

_HOUSE_NUMBER = r"\b\d{1,6}[A-Z]?"
# One word of a street name: "Main", "MLK", "N.", "5th".
_NAME_WORD = "(?:" + _WORD + r"|[A-Z]{2,4}|[A-Z]\.?|\d{1,3}(?:st|nd|rd|th))"
_POST_DIRECTIONAL = r"(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
_UNIT = (
    r"(?:,?[ \t]*(?i:apt|apartment|suite|ste|unit|floor|fl|room|rm)\b\.?[ \t]*#?[ \t]*"
    r"[A-Za-z0-9]{1,6}\b|,?[ \t]*#[ \t]*[A-Za-z0-9]{1,6}\b)?"
)
# An article does not start a street name: "Chapter 3 The Long Road" is a title.
_NOT_ARTICLE = r"(?!(?:The|A|An)\b)"
_STREET = (
    _HOUSE_NUMBER
    + r"[ \t]+"
    + _NOT_ARTICLE
    + _NAME_WORD
    + r"(?:[ \t]+"
    + _NAME_WORD
    + r"){0,3}[ \t]+"
    + _SUFFIX
    + _POST_DIRECTIONAL
    + _UNIT
)
# ", Springfield", optionally followed by ", IL 62704" / ", USA" / " 62704".
_CITY = (
    r",\s*" + _WORD + r"(?:[ \t]+" + _WORD + "){0,2}"
    r"(?:,?[ \t]*(?:[A-Z]{2,3}|U\.S\.A?\.?|" + _WORD + r"(?:[ \t]+" + _WORD + ")?)"
    r"(?:[ \t]+\d{5}(?:-\d{4})?)?)?"
)
_LOWERCASE_STREET = r"\b\d{1,6}(?:[ \t]+[A-Za-z][a-z']*){1,3}[ \t]+" + _DISTINCT_SUFFIX + _UNIT
# "P.O. Box 149", "PO Box 12".
_PO_BOX = r"\b(?i:p\.?[ \t]?o\.?[ \t]+box)[ \t]+\d{1,6}\b"
# US military mail: "PSC 7589, Box 0572 APO AE 20040", "USS Mahler FPO AA 70489".
_MILITARY = (
    r"\b(?:(?:Unit|PSC|CMR)[ \t]+\d{1,5},?[ \t]+Box[ \t]+\d{1,5}|(?:USS|USNS|USNV|USCGC)"
    r"[ \t]+" + _WORD + r")[ \t]+[ADF]PO[ \t]+A[AEP][ \t]+\d{5}\b"
)
# European forms. The street type is part of the word ("Hammarvägen 15", "Parijsstraat 8"),
# a separate word after the name ("Augsburger Strasse 36"), or a word before the name
# ("Rua do Arenque 1634", "ul. Słowicza 10"); a house number follows.
_EU_JOINED = (
    r"(?i:stra(?:ss|ß)e|gasse|weg|allee|platz|damm|ufer|straat|laan|gracht|plein|steeg"
    r"|kade|vej|vænget|vägen|väg|gatan|gata|gade|veien|vegen|katu|kuja)"
)
_EU_SEPARATE = r"(?:Stra(?:ss|ß)e|Str\.|Gasse|Weg|Allee|Platz|Straat|Laan)"
_EU_LEADING = (
    r"(?:Rua|Rue|Via|Viale|Calle|Carrer|Avenida|Avda\.|Avenue|Chemin|Piazza|Plaza|Praça"
    r"|Largo|Travessa|Estrada|Alameda|Paseo|Camino|[Uu]l\.|Ulica)"
)
_PARTICLE = r"(?:d[aeiou]s?|del|de[ \t]+la|la|le|les|du|des|di|della|van|von|der)"
_HOUSE_NUMBER_AFTER = r"[ \t]+\d{1,5}[A-Za-z]?\b"
_EU_NAME = "|".join(
    [
        _UPPER + r"\p{Ll}{2,40}" + _EU_JOINED,  # "Hammarvägen"
        _WORD + r"[ \t]+" + _EU_SEPARATE,  # "Augsburger Strasse"
        _EU_LEADING + r"(?:[ \t]+(?:" + _PARTICLE + "|" + _WORD + r")){1,5}",  # "Rua do Arenque"
    ]
)
_EU_STREET = r"\b(?:" + _EU_NAME + ")" + _HOUSE_NUMBER_AFTER + _UNIT


class StreetAddressRecognizer(PatternRecognizer):
    """Recognize street and postal addresses, US-style first.

    Scores are modest on their own; a city after the street, or a context word such as
    "address" or "lives" before it, raises them.
    """

    PATTERNS = [
        Pattern("street address (number, name, street type)", _STREET, 0.45),
        Pattern("street address with city", _STREET + _CITY, 0.6),
        Pattern("street address, lowercase", _LOWERCASE_STREET, 0.25),
        Pattern("post office box", _PO_BOX, 0.45),
        Pattern("US military address", _MILITARY, 0.6),
        Pattern("street address (European form)", _EU_STREET, 0.45),
    ]

    CONTEXT = [
        "address",
        "addresses",
        "home",
        "live",
        "lives",
        "living",
        "lived",
        "reside",
        "resides",
        "residence",
        "residing",
        "located",
        "ship",
        "shipping",
        "deliver",
        "delivery",
        "mail",
        "mailing",
        "apartment",
        "house",
        "moved",
    ]

    def __init__(
        self,
        patterns: list[Pattern] | None = None,
        context: list[str] | None = None,
        supported_language: str = "en",
        supported_entity: str = "STREET_ADDRESS",
        name: str | None = None,
    ) -> None:
        super().__init__(
            supported_entity=supported_entity,
            # Fresh Pattern objects: Presidio caches the compiled regex on each one.
            patterns=patterns or [Pattern(p.name, p.regex, p.score) for p in self.PATTERNS],
            context=context or list(self.CONTEXT),
            supported_language=supported_language,
            name=name or "StreetAddressRecognizer",
            # Case matters: a capitalised word must mean one. No "." or "^$" is used, so
            # DOTALL and MULTILINE are not needed either.
            global_regex_flags=0,
        )
