"""ADQL text -> a sqlglot tree: the ADQL dialect, ADQL's function table, syntax errors.

sqlglot does the parsing. ADQL's own functions are taken out of sqlglot's hands at the token
level: a function name ADQL defines (CONTAINS, LOG, TRUNCATE, POINT, ...) is renamed
`ADQL:<NAME>` before parsing, so the parser builds a plain `exp.Anonymous` for it and never its
own idea of the name (sqlglot reads CONTAINS as string containment, LOG as base 10, RAND(seed)
as unsupported). `rewrite` lowers these nodes to DuckDB. The dialect itself only overrides the
tokenizer and settings: with the mypyc-compiled sqlglot (`sqlglot[c]`, 4-5x faster) parser,
generator and expression classes cannot be subclassed from Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlglot import exp, parser, tokens
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from mirror.errors import AdqlSecurityError, AdqlSyntaxError

PREFIX = "ADQL:"  # cannot be written by a user: ':' is no identifier character

# name -> (fewest, most arguments); None: no upper bound
MATH = {"ABS": (1, 1), "ACOS": (1, 1), "ASIN": (1, 1), "ATAN": (1, 1), "ATAN2": (2, 2),
        "CEILING": (1, 1), "COS": (1, 1), "COT": (1, 1), "DEGREES": (1, 1), "EXP": (1, 1),
        "FLOOR": (1, 1), "LOG": (1, 1), "LOG10": (1, 1), "MOD": (2, 2), "PI": (0, 0),
        "POWER": (2, 2), "RADIANS": (1, 1), "RAND": (0, 1), "ROUND": (1, 2), "SIN": (1, 1),
        "SQRT": (1, 1), "TAN": (1, 1), "TRUNCATE": (1, 2)}
GEOMETRY = {"POINT": (2, 3), "CIRCLE": (2, 4), "BOX": (3, 5), "POLYGON": (3, None),
            "REGION": (1, 1), "CONTAINS": (2, 2), "INTERSECTS": (2, 2), "DISTANCE": (2, 4),
            "AREA": (1, 1), "CENTROID": (1, 1), "COORD1": (1, 1), "COORD2": (1, 1),
            "COORDSYS": (1, 1)}
# User-defined functions from the IVOA UDF catalogue that this mirror implements.
UDFS = {"IVO_HEALPIX_INDEX": (3, 3), "IVO_INTERVAL_OVERLAPS": (4, 4),
        "IVO_NOCASEMATCH": (2, 2), "IVO_HASWORD": (2, 2), "IVO_STRING_AGG": (2, 2)}
FUNCTIONS = {**MATH, **GEOMETRY, "IN_UNIT": (2, 2), **UDFS}
# sqlglot's own nodes that are ADQL as they stand (aggregates, string and conditional functions)
PLAIN_FUNCTIONS = {exp.Count: "COUNT", exp.Min: "MIN", exp.Max: "MAX", exp.Avg: "AVG",
                   exp.Sum: "SUM", exp.Lower: "LOWER", exp.Upper: "UPPER",
                   exp.Coalesce: "COALESCE"}
SUPPORTED = sorted({*FUNCTIONS, *PLAIN_FUNCTIONS.values()})

# ADQL 2.1 casts to these types only (CHAR/VARCHAR with an optional length).
_ADQL_TYPES = {"SMALLINT", "INTEGER", "BIGINT", "REAL", "DOUBLE PRECISION", "CHAR", "CHARACTER",
               "VARCHAR", "TIMESTAMP"}
_KEEP = {TokenType.NULL, TokenType.UNION}  # keywords that are also type tokens
_KEYWORDS = {k: v for k, v in tokens.Tokenizer.KEYWORDS.items()
             if v not in parser.Parser.TYPE_TOKENS or k in _ADQL_TYPES or v in _KEEP}


class ADQL(Dialect):
    """ADQL 2.1 as sqlglot reads it: TOP, PostgreSQL's NULL order, only ADQL's type names."""

    NULL_ORDERING = "nulls_are_large"  # NULLs last ascending, first descending (PostgreSQL)
    SUPPORTS_USER_DEFINED_TYPES = True  # CAST(x AS POINT); other names are refused later

    class Tokenizer(tokens.Tokenizer):
        KEYWORDS = {**_KEYWORDS, "TOP": TokenType.TOP}


DIALECT = ADQL()
_HINTS = (
    ("Expecting )", "check that every parenthesis is closed"),
    ("Expecting (", "a function call needs parentheses"),
    ("missing for <class 'sqlglot.expressions.query.Limit'>",
     "TOP takes a non-negative integer: SELECT TOP 10 ..."),
    ("missing for <class 'sqlglot.expressions.functions.Coalesce'>",
     "COALESCE takes one or more arguments"),
    ("number of provided arguments", "check the number of arguments of the function"),
)
_DEFAULT_HINT = ("check the spelling near this point; ADQL reserved words used as names must be "
                 'double-quoted, e.g. "distance"')


def parse(text: str, check: Callable[[list[tokens.Token], str], None] | None = None) -> exp.Expr:
    """The one statement in `text` as a tree, with ADQL's functions as `ADQL:` nodes;
    `check` sees the tokens first (to refuse statements no parse should be tried on)."""
    try:
        toks = DIALECT.tokenize(text)
    except TokenError as exc:
        line, col, bad = _token_error_position(text)
        raise AdqlSyntaxError("cannot read the query: unterminated string or identifier",
                              "close every ' and \" (a quote inside is written twice)",
                              query=text, line=line, column=col, text=bad) from exc
    if check is not None:
        check(toks, text)
    _mark_adql_functions(toks, text)
    try:
        trees = [t for t in DIALECT.parser().parse(toks, text) if t is not None]
    except ParseError as exc:
        raise _syntax_error(exc, text) from exc
    if len(trees) != 1:
        if not trees:
            raise AdqlSyntaxError("the query is empty", "send one SELECT statement", query=text)
        raise AdqlSecurityError(
            f"{len(trees)} statements found; only one query is allowed",
            "send one SELECT (or WITH ... SELECT) statement without ';' between statements")
    return trees[0]


def _mark_adql_functions(toks: list, text: str) -> None:
    for tok, nxt in zip(toks, toks[1:], strict=False):
        if nxt.token_type != TokenType.L_PAREN:
            continue
        if tok.token_type == TokenType.IDENTIFIER:
            raise AdqlSyntaxError(
                f'"{tok.text}" is quoted, so it cannot name a function', "write the name bare",
                query=text, line=tok.line, column=start_col(text, tok), text=tok.text)
        name = tok.text.upper()
        if name in FUNCTIONS and tok.token_type != TokenType.STRING:
            tok.text = PREFIX + name


def start_col(text: str, tok: tokens.Token) -> int:
    line_start = text.rfind("\n", 0, tok.start) + 1
    return tok.start - line_start + 1


def _syntax_error(exc: ParseError, text: str) -> AdqlSyntaxError:
    err = exc.errors[0] if exc.errors else {}
    description = str(err.get("description") or exc).split(". Line ")[0]
    description = description.replace(PREFIX, "")
    highlight = str(err.get("highlight") or "").replace(PREFIX, "")
    line = int(err.get("line") or 0)
    col = int(err.get("col") or 0)
    if highlight and col >= len(highlight):  # sqlglot reports where the token ends
        col = col - len(highlight) + 1
    hint = next((h for key, h in _HINTS if key in description), _DEFAULT_HINT)
    message = re.sub(r"<class 'sqlglot\.expressions\.[\w.]*?(\w+)'>", r"\1", description)
    return AdqlSyntaxError(f"syntax error: {message}", hint, query=text, line=line,
                           column=col, text=highlight)


def _token_error_position(text: str) -> tuple[int, int, str]:
    """Where an unterminated quote starts (for the caret; the tokenizer does not say)."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("--", i):
            i = text.find("\n", i)
            if i < 0:
                break
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                return _line_col(text, i) + (text[i:i + 2],)
            i = end + 2
            continue
        elif ch in "'\"":
            j = i + 1
            while True:
                j = text.find(ch, j)
                if j < 0:
                    return _line_col(text, i) + (text[i:].splitlines()[0],)
                if text.startswith(ch * 2, j):
                    j += 2
                    continue
                break
            i = j
        i += 1
    return 0, 0, ""


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def adql_name(node: exp.Expr) -> str | None:
    """The ADQL function name of a marked node (`CONTAINS`), else None."""
    if isinstance(node, exp.Anonymous) and isinstance(node.this, str) \
            and node.this.startswith(PREFIX):
        return node.this[len(PREFIX):]
    return None


def call(name: str, *args: exp.Expr) -> exp.Anonymous:
    """A DuckDB function or macro call node."""
    return exp.Anonymous(this=name, expressions=list(args))
