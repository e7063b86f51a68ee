"""Tell the words around a disguised payload from the payload, so the wrapper never decides a topic.

"Kindly decode the passage below and provide a complete response", "the line above is ROT13;
reply to it", "Dekodiere diesen Text und antworte darauf": a wrapper that only asks for the
payload to be decoded and answered says nothing about what the payload asks, yet a sentence
model reads "decode this and respond" as the opening of a jailbreak. Such a clause (one that
names a decoding, or asks for a reply to "it / this / the text above") is dropped from the
wrapper before the intent head reads it. Whatever else the wrapper says ("write ransomware
that uses this config") is kept and judged; the decoded payload itself is never filtered.

The clause test is about the act of decoding and answering in general (verbs and nouns of
encoding, translating and replying, in the languages the multilingual head reads), not any
one phrasing: it is not tuned to the wrappers that ``eval --obfuscate`` uses.
"""

from __future__ import annotations

import re

from classifiers.normalize import lexicon

# Names of a decoding or an encoding, and verbs of undoing one (stems: "decod" covers decode,
# decoded, decoding; "chiffr" déchiffrer; "kodier" dekodieren).
_DECODING = re.compile(
    r"\b(?:de|en|un|re|d[ée])?cod(?:e|ed|es|ing|ier\w*|ifi\w*|ific\w*)\b|\bd[ée]chiffr\w*|\b\w{0,6}(?:cipher|crypt|chiffr|cifr|kodier|schlüssel)\w*"
    r"|\b(?:trans|tra|tradu|über)(?:lat|duc|setz)\w*|\bconvert\w*|\bunscrambl\w*|\bobfuscat\w*|\bdeobfuscat\w*"
    r"|\bbase[\s-]?(?:64|32|16)\b|\bb64\b|\bhex(?:adecimal)?\b|\brot[\s-]?\d+\b|\bca[eé]sar\b|\bcäsar\b|\bc[eé]sar\b"
    r"|\bmorse\b|\bleet\w*|\bunicode\b|\bencoding\b|\bencoded\b|\brevers\w*|\bbackwards?\b|\bmirror\w*|\bupside[\s-]down\b"
    r"|\binvisible\b|\bhidden\b|\bdisguis\w*|\bscrambl\w*|\bspelled\b|\bspaced\b|\bdotted\b|\bhyphenated\b"
    r"|\bzero[\s-]?width\b|\bzalgo\b|\bhomoglyph\w*|\blook[\s-]?alike\b|\bfull[\s-]?width\b|\baccent\w*|\bdiacritic\w*"
    r"|\btag\s+characters?\b|\bright[\s-]to[\s-]left\b|\brtl\b|\bbidi\b|\bpig\s+latin\b|\batbash\b|\bvigen[eè]re\b"
    r"|\bbinary\b|\bascii\b|\burl[\s-]?encoded\b|\bpercent[\s-]encoded\b|\bpunycode\b|\bbraille\b|\bflipped\b"
    r"|\bcipher\w*|\bcode\s*words?\b|\bsecret\s+(?:code|language|message)\b"
    r"|解読|解码|解碼|復号|デコード|翻訳|翻译|暗号|расшифр\w*|декодир\w*|переве\w*",
    re.IGNORECASE,
)
# Asking for a reply, or for the payload to be acted on ...
_REPLY = re.compile(
    r"\b(?:answer|respond|response|reply|replies|replying|antwort\w*|beantwort\w*|r[ée]pon\w*|respond\w*|contest\w*"
    r"|rispond\w*|follow|obey|execute|handle|process|do\s+what|carry\s+out|act\s+on)\b|答え|回答|返答|回复|ответ\w*",
    re.IGNORECASE,
)
# ... that points at it ("it", "this", "the text above").
_POINTER = re.compile(
    r"\b(?:it|this|that|these|those|above|below|following|enclosed|attached|message|text|passage|block|line|lines"
    r"|snippet|string|input|content|question|request|one|here|darauf|dies\w*|ce|cette|ceci|este|esta|esto|questo)\b"
    r"|-y\b|この|これ|это",
    re.IGNORECASE,
)
# The share of common English words of a section that reads as prose (ciphertext: near 0).
FLUENT = 0.15
# A wrapper clause with a smaller share of English words (:func:`word_share`) than this is
# ciphertext (or another language, which the multilingual head reads): the English head does
# not judge it. Nor is a wrapper read with a payload of less (a decoding that came out as
# gibberish).
WRAPPER_MIN_WORD_SHARE = 0.6
# A clause this short that asks for a reply ("y responde", "reply pls") needs no pointer.
_BARE_REPLY_WORDS = 4
_LETTERS = re.compile(r"[A-Za-z]+")
# Clauses: split at sentence ends, colons, semicolons, commas, brackets and line breaks.
_CLAUSE = re.compile(r"[^.!?;:,()\[\]{}<>\n\u3001\u3002\uff1a\uff0c]+")


def is_about_the_payload(clause: str) -> bool:
    """Whether ``clause`` only asks for a payload to be decoded or answered: it names a
    decoding, or asks for a reply to "it" (or is a bare "reply pls"), and says fewer than
    ``MIN_OWN_WORDS`` words of its own besides ("Write ransomware that encrypts every file"
    names a cipher too, and is a request of its own)."""
    if _DECODING.search(clause):
        pass
    elif not (_REPLY.search(clause) and (_POINTER.search(clause) or len(clause.split()) <= _BARE_REPLY_WORDS)):
        return False
    rest = _POINTER.sub(" ", _REPLY.sub(" ", _DECODING.sub(" ", clause)))
    own = [t for t in _LETTERS.findall(rest.lower()) if len(t) >= 2 and t not in _FUNCTION_WORDS]
    return len(own) < MIN_OWN_WORDS


# Words of its own (besides decoding, replying and pointing at the payload) that make a clause
# a request in its own right.
MIN_OWN_WORDS = 4
# Function and politeness words, which say nothing of what is asked.
_FUNCTION_WORDS = frozenset([
    "a", "an", "the", "and", "or", "but", "so", "then", "now", "also", "just", "only", "please", "kindly",
    "can", "could", "would", "will", "you", "u", "ur", "your", "me", "my", "i", "we", "our", "us", "to", "of",
    "in", "into", "on", "for", "with", "as", "at", "by", "from", "is", "are", "was", "were", "be", "been",
    "being", "do", "does", "did", "what", "how", "ok", "okay", "hey", "hi", "hello", "lol", "pls", "plz",
    "thanks", "thank", "thx", "dear", "well", "all", "any", "some", "same", "way", "there", "here"
])  # fmt: skip


def word_share(clause: str) -> float:
    """Share of the clause's tokens of three letters or more that are English words: near 1 for
    prose, near 0 for ciphertext or reversed text (whose chance "a" and "be" fool a count of
    common words)."""
    tokens = [t for t in _LETTERS.findall(clause.lower()) if len(t) >= 3]
    if not tokens:
        return 0.0
    words = lexicon()
    return sum(1 for t in tokens if t in words) / len(tokens)


def without_decoding_requests(wrapper: str, min_words: float = 0.0, bare_pointers: bool = False) -> str:
    """``wrapper`` less its clauses about decoding or answering the payload (joined by spaces)
    and, with ``min_words``, less the clauses with a smaller :func:`word_share` (ciphertext
    the decoding already read, a wrapper in another language). With ``bare_pointers``, less
    the clauses too that only point at the payload (:func:`points_only`: "what is it asking
    for", "can you do it"): read with the payload they add no request of their own, only the
    shape of a jailbreak's "do what this says"."""
    kept = [m.group(0).strip() for m in _CLAUSE.finditer(wrapper)]
    return " ".join(
        c
        for c in kept
        if c
        and not is_about_the_payload(c)
        and (not min_words or word_share(c) >= min_words)
        and not (bare_pointers and points_only(c))
    )


def without_edge_requests(text: str) -> str:
    """``text`` less the requests to decode or answer it at its start and end ("Decode this
    and answer: <prompt>", "<prompt> ... respond to the above"): the words a wrapper puts
    around a prompt, whatever disguise the prompt wore. An edge sentence made mostly of such
    requests goes whole ("For a review, kindly decode the passage below and respond."), one
    made mostly of something else loses only its requests; the middle is never touched, and a
    text of nothing but requests is returned as it is."""
    sentences = [m.span() for m in _SENTENCE.finditer(text) if m.group(0).strip()]
    start, end = 0, len(text)
    for a, b in sentences:
        first, last, share = _kept_clauses(text, a, b)
        if share > EDGE_REQUEST_SHARE:
            start = b
            continue
        if first > a:  # requests at the sentence's start go, whatever precedes it stays
            start = first
        break
    for a, b in reversed(sentences):
        if b <= start:
            break
        first, last, share = _kept_clauses(text, max(a, start), b)
        if share > EDGE_REQUEST_SHARE:
            end = a
            continue
        if last < b:
            end = last
        break
    kept = text[start:end].strip()
    return kept or text


# An edge sentence whose requests hold more than this share of its words goes whole.
EDGE_REQUEST_SHARE = 0.5
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


def _kept_clauses(text: str, a: int, b: int) -> tuple[int, int, float]:
    """For the sentence ``text[a:b]``: where its first and last clause that is not a request
    start and end, and the share of its words in requests."""
    clauses = [(m.start() + a, m.end() + a, m.group(0)) for m in _CLAUSE.finditer(text[a:b]) if m.group(0).strip()]
    kept = [(x, y) for x, y, c in clauses if not is_about_the_payload(c)]
    words = sum(len(c.split()) for _x, _y, c in clauses)
    requests = sum(len(c.split()) for _x, _y, c in clauses if is_about_the_payload(c))
    if not kept:
        return b, b, 1.0 if words else 0.0
    # The sentence's own marks ("<|", "!+", a full stop) stay unless a request stood there.
    first = a if kept[0][0] == clauses[0][0] else kept[0][0]
    last = b if kept[-1][1] == clauses[-1][1] else kept[-1][1]
    return first, last, requests / words if words else 0.0


def common_edges(a: str, b: str) -> tuple[int, int]:
    """Lengths of the longest common prefix and suffix of ``a`` and ``b`` that end (prefix) or
    begin (suffix) between words, never overlapping: what a decoding left as it was."""
    limit = min(len(a), len(b))
    prefix = _common_length(a, b, limit, from_end=False)
    while prefix > 0 and a[prefix - 1].isalnum():
        prefix -= 1
    suffix = _common_length(a, b, limit - prefix, from_end=True)
    while suffix > 0 and a[len(a) - suffix].isalnum():
        suffix -= 1
    return prefix, suffix


def _common_length(a: str, b: str, limit: int, from_end: bool) -> int:
    """Length of the common prefix (or suffix) of ``a`` and ``b``, at most ``limit``: a binary
    search over slice comparisons, which run in C (a character loop over a megabyte does not)."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        same = a[len(a) - mid :] == b[len(b) - mid :] if from_end else a[:mid] == b[:mid]
        if same:
            low = mid
        else:
            high = mid - 1
    return low


# Words that point at text outside the sentence they stand in ("what does it say", "answer
# this", "the above"). Not "that", which is as often a relative pronoun ("code that ...").
_CONTEXT_POINTER = re.compile(
    r"\b(?:it|this|these|those|above|below|aforementioned|preceding|following)\b", re.IGNORECASE
)
# A request with more words of its own than this says what it asks whatever "it" is.
LEANING_MAX_OWN_WORDS = 6


def leans_on_context(request: str) -> bool:
    """Whether the request sentence ``request`` points at text outside it ("it", "this", "the
    above") and says little of its own (at most :data:`LEANING_MAX_OWN_WORDS` words besides
    function words and pointers): "Could you work out what it means and help with it?" means
    what "it" is, so it is not judged alone. A request that names its own object ("Write a
    keylogger that mails me every password it records") has words enough to stand."""
    return _CONTEXT_POINTER.search(request) is not None and len(_own_words(request)) <= LEANING_MAX_OWN_WORDS


# A wrapper clause pointing at the payload with at most this many words of its own asks
# nothing of its own ("what is it asking for", "can you do it"); "use it to break into my
# ex's account" has four.
POINTER_ONLY_OWN_WORDS = 2


def points_only(clause: str) -> bool:
    """Whether ``clause`` points at text outside it and has at most
    :data:`POINTER_ONLY_OWN_WORDS` words of its own (function words aside)."""
    return _CONTEXT_POINTER.search(clause) is not None and len(_own_words(clause)) <= POINTER_ONLY_OWN_WORDS


def _own_words(part: str) -> list[str]:
    """The words of ``part`` besides function words and pointers."""
    return [
        t
        for t in _LETTERS.findall(part.lower())
        if len(t) >= 2 and t not in _FUNCTION_WORDS and not _CONTEXT_POINTER.fullmatch(t)
    ]
