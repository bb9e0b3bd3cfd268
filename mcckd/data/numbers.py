"""Numbers written in text, in digits or in words, as normalised answer strings.

`1,200` -> `1200`, `$18` -> `18`, `18.0` -> `18`, `3.50` -> `3.5`, `3/4` -> `0.75`; a fraction
that has no exact decimal stays `a/b`, reduced. Number words count where there are no digits:
"twenty-one" -> `21`, "three hundred and five" -> `305`.
"""
import re
from fractions import Fraction

# A minus sign only when glued to the digits and not a subtraction ("102 - 35", "x-4").
NUMBER = re.compile(
    r"(?<![\w)\].])(?P<sign>-)?\$?(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
    r"(?:\.(?P<decimals>\d+))?(?:/(?P<denominator>0*[1-9]\d*))?"
)
UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORD_VALUES = {
    **{word: value for value, word in enumerate(UNITS)},
    **{word: 20 + 10 * i for i, word in enumerate(TENS)},
}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1000000}
NUMBER_WORDS = re.compile(
    r"\b(?:{0})(?:(?:[\s-]+(?:and[\s-]+)?)(?:{0}))*\b".format("|".join([*NUMBER_WORD_VALUES, *SCALES])),
    re.IGNORECASE,
)


def whole_number(text):
    """The normalised number when `text` is one number and nothing else (a period may close
    it), else None."""
    match = NUMBER.fullmatch(text.strip().rstrip(".").strip())
    return number_text(match) if match else None


def first_number(text):
    """The first number written in digits, else in words, normalised; or None."""
    match = NUMBER.search(text)
    if match:
        return number_text(match)
    words = NUMBER_WORDS.search(text)
    return str(number_word_value(words.group(0))) if words else None


def last_number(text):
    """The last number written in digits, else in words, normalised; or None."""
    numbers = list(NUMBER.finditer(text))
    if numbers:
        return number_text(numbers[-1])
    words = list(NUMBER_WORDS.finditer(text))
    return str(number_word_value(words[-1].group(0))) if words else None


def number_text(match):
    """Normalised text of a NUMBER match: no commas or $, no trailing zeros, fractions reduced."""
    value = Fraction(match.group("digits").replace(",", "") + "." + (match.group("decimals") or "0"))
    if match.group("denominator"):
        value /= int(match.group("denominator"))
    if match.group("sign"):
        value = -value
    return fraction_text(value)


def fraction_text(value):
    """`value` as a plain decimal when it has an exact one (18, 3.5, 0.75), else "a/b"."""
    denominator = value.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(scaled, 10**places)
    return f"{sign}{whole}" + (f".{fraction:0{places}d}" if places else "")


def number_word_value(words):
    """The value of a run of number words: "twenty-one" -> 21, "three hundred and five" -> 305."""
    total = current = 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word in NUMBER_WORD_VALUES:
            current += NUMBER_WORD_VALUES[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in SCALES:
            total += max(current, 1) * SCALES[word]
            current = 0
    return total + current
