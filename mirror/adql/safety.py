"""Only queries get through: an allow-list of statement, node and function kinds.

What is not on the lists is refused. The refusal says `AdqlSecurityError` when the construct is a
statement or a DuckDB feature that reaches files, the network or settings (read_csv, COPY,
ATTACH, PRAGMA, SET, table functions, file-path tables, SELECT INTO, system schemas), and
`AdqlUnsupportedError` for harmless SQL that is simply not ADQL (window functions, arrays, ...).
The same allow-list is applied again to the DuckDB tree after translation (`check_output`).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from mirror.errors import AdqlSecurityError, AdqlSyntaxError, AdqlUnsupportedError

from .dialect import FUNCTIONS, PLAIN_FUNCTIONS, SUPPORTED, adql_name, start_col

# Words that start statements other than queries (DuckDB's and SQL's).
STATEMENTS = frozenset("""
ALTER ANALYZE ATTACH BEGIN CALL CHECKPOINT COMMENT COMMIT COPY CREATE DEALLOCATE DELETE DESCRIBE
DETACH DROP EXECUTE EXPLAIN EXPORT FORCE GRANT IMPORT INSERT INSTALL LOAD MERGE PRAGMA PREPARE
REINDEX RESET REVOKE ROLLBACK SET SHOW SUMMARIZE TRUNCATE UPDATE UPSERT USE VACUUM
""".split())
# Fragments of DuckDB function names that read or write outside the query's tables.
_RISKY = ("read", "write", "file", "glob", "setting", "env", "http", "s3", "parquet", "csv",
          "json", "sniff", "duckdb", "pragma", "query", "sql", "attach", "install", "load",
          "copy", "export", "import", "system", "secret", "extension", "excel", "iceberg",
          "delta", "url", "path", "seed", "sqlite", "postgres", "mysql", "scan", "which")
SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog", "system", "temp", "main"})

ALLOWED = (
    exp.Select, exp.Union, exp.Except, exp.Intersect, exp.Subquery, exp.From, exp.Join,
    exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered, exp.Limit, exp.Offset, exp.With,
    exp.CTE, exp.TableAlias, exp.Table, exp.Column, exp.Identifier, exp.Star, exp.Alias,
    exp.Paren, exp.Literal, exp.Null, exp.Neg, exp.Not, exp.And, exp.Or, exp.EQ, exp.NEQ,
    exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between, exp.Like, exp.ILike, exp.In, exp.Is,
    exp.Exists, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.DPipe, exp.Cast, exp.DataType,
    exp.DataTypeParam, exp.Case, exp.If, exp.Distinct, *PLAIN_FUNCTIONS,
)
# What the translation itself adds (checked on the DuckDB tree).
OUTPUT_EXTRA = (exp.IntDiv, exp.Boolean, exp.Anonymous, exp.Array, exp.Bracket)
_SELECT_ARGS = {"kind", "expressions", "distinct", "from_", "joins", "where", "group", "having",
                "order", "limit", "offset", "with_"}
_TABLE_ARGS = {"this", "alias", "db", "joins"}


class TokenCheck:
    """Refuses statements other than one query before parsing (cheap, and parse-proof), and
    counts the JOINs that need a condition (sqlglot reads `a JOIN b` as `a, b`)."""

    def __init__(self) -> None:
        self.conditional_joins = 0

    def __call__(self, toks: list[Token], text: str) -> None:
        check_tokens(toks, text)
        for i, tok in enumerate(toks):
            if i + 1 < len(toks) and toks[i + 1].token_type == TokenType.L_PAREN:
                _check_call(toks, i)
            if tok.token_type != TokenType.JOIN:
                continue
            j = i - 1
            while j >= 0 and toks[j].token_type in _JOIN_WORDS:
                j -= 1
            if j < 0 or toks[j].token_type not in (TokenType.CROSS, TokenType.NATURAL):
                self.conditional_joins += 1


_JOIN_WORDS = {TokenType.INNER, TokenType.OUTER, TokenType.LEFT, TokenType.RIGHT, TokenType.FULL}


_CALLABLE = {n.lower() for n in (*FUNCTIONS, *PLAIN_FUNCTIONS.values(), "CAST")}


def _check_call(toks: list[Token], i: int) -> None:
    """A name before '(' is a function call: it must be ADQL's (the allow-list, by name)."""
    tok = toks[i]
    name = tok.text.lower()
    if name in _CALLABLE or tok.token_type not in (TokenType.VAR, TokenType.GLOB):
        return
    if i > 0 and toks[i - 1].token_type in (TokenType.WITH, TokenType.ALIAS, TokenType.COMMA):
        depth, j = 0, i + 1
        while j < len(toks):  # `name (columns) AS (` is a CTE, not a call
            depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(toks[j].token_type, 0)
            if depth == 0:
                break
            j += 1
        if j + 1 < len(toks) and toks[j + 1].token_type == TokenType.ALIAS:
            return
    _refuse_function(tok.text)


def check_tokens(toks: list[Token], text: str) -> None:
    """Refuse statements other than one query before parsing (cheap, and parse-proof)."""
    if not toks:
        return
    first = toks[0].text.upper()
    if first in STATEMENTS:
        raise AdqlSecurityError(f"{first} statements are refused: only queries are accepted",
                                "send one SELECT (or WITH ... SELECT) query")
    for i, tok in enumerate(toks):
        if tok.token_type == TokenType.SEMICOLON and i + 1 < len(toks):
            raise AdqlSecurityError(
                "more than one statement found: only one query is accepted",
                "send a single SELECT (or WITH ... SELECT) query, without ';' inside")
        if tok.token_type == TokenType.DCOLON:
            raise AdqlSyntaxError("'::' casts are not ADQL", "write CAST(x AS type)",
                                  query=text, line=tok.line, column=start_col(text, tok),
                                  text=tok.text)
        if tok.token_type == TokenType.LIMIT:
            raise AdqlSyntaxError("LIMIT is not ADQL", "write SELECT TOP n ... instead",
                                  query=text, line=tok.line, column=start_col(text, tok),
                                  text=tok.text)


def check_statement(tree: exp.Expr) -> exp.Expr:
    """The query itself (a parenthesised one unwrapped), or a refusal."""
    while isinstance(tree, exp.Subquery) and not tree.alias:
        tree = tree.this
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        kind = type(tree).__name__.upper()
        if isinstance(tree, (exp.Command, exp.Copy, exp.Pragma, exp.Set, exp.Insert, exp.Update,
                             exp.Delete, exp.Create, exp.Drop, exp.Describe, exp.Values)):
            raise AdqlSecurityError(f"{kind} statements are refused: only queries are accepted",
                                    "send one SELECT (or WITH ... SELECT) query")
        raise AdqlSyntaxError("not a query: an ADQL query starts with SELECT or WITH",
                              "check the first words of the query")
    return tree


def check_nodes(tree: exp.Expr) -> None:
    """Every node must be on the allow-list; tables must be plain names."""
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            if adql_name(node) is None:
                _refuse_function(node.name)
            continue
        if not isinstance(node, ALLOWED):
            _refuse_node(node)
        if isinstance(node, exp.Select):
            _check_select(node)
        elif isinstance(node, exp.Table):
            _check_table(node)
        elif isinstance(node, exp.Star) and any(node.args.get(k) for k in node.args):
            raise AdqlUnsupportedError("* EXCLUDE/REPLACE is not ADQL", construct="* EXCLUDE",
                                       hint="list the columns you want")
        elif isinstance(node, exp.TableAlias) and node.args.get("columns"):
            raise AdqlUnsupportedError(
                "column lists after a table alias are not ADQL", construct="alias(columns)",
                hint="name the columns with AS in the subquery's SELECT list")


def _check_select(node: exp.Select) -> None:
    if node.args.get("into"):
        raise AdqlSecurityError("SELECT INTO writes a table and is refused",
                                "remove INTO ...; queries only read")
    extra = sorted(k for k, v in node.args.items() if v and k not in _SELECT_ARGS)
    if extra:
        name = extra[0].rstrip("_").upper()
        raise AdqlUnsupportedError(f"{name} is not ADQL", construct=name,
                                   hint="ADQL has SELECT, FROM, WHERE, GROUP BY, HAVING, "
                                        "ORDER BY, TOP and OFFSET")


def _check_table(node: exp.Table) -> None:
    if not isinstance(node.this, exp.Identifier):
        name = node.this.sql() if node.this is not None else "?"
        raise AdqlSecurityError(f"table functions are refused in FROM: {name}",
                                "query the catalogue's tables, e.g. ivoa.obscore")
    extra = sorted(k for k, v in node.args.items() if v and k not in _TABLE_ARGS)
    if extra:
        raise AdqlUnsupportedError(f"{extra[0].upper()} on a table is not ADQL",
                                   construct=extra[0].upper())
    name = node.name
    if any(ch in name for ch in "./\\:*?~") and node.this.quoted:
        raise AdqlSecurityError(
            f'table name "{name}" looks like a file path or URL: refused',
            "DuckDB would read such a name as a file; query the catalogue's tables")
    if node.db.lower() in SYSTEM_SCHEMAS or name.lower().startswith(("duckdb_", "pragma_")):
        raise AdqlSecurityError(f"system table {node.sql()} is refused",
                                "the catalogue's own description is in TAP_SCHEMA")


def _refuse_function(name: str) -> None:
    low = name.lower()
    if any(part in low for part in _RISKY):
        raise AdqlSecurityError(
            f"function {name} is refused: it is not ADQL and may reach files, the network "
            "or settings", "ADQL functions only; see the list in the documentation")
    raise AdqlUnsupportedError(
        f"function {name} is not an ADQL function this service supports",
        f"supported: {', '.join(SUPPORTED)}", construct=name)


def _refuse_node(node: exp.Expr) -> None:
    if isinstance(node, exp.Func):
        _refuse_function(node.key.lower())
    if isinstance(node, (exp.Command, exp.Copy, exp.Pragma, exp.Set, exp.Insert, exp.Update,
                         exp.Delete, exp.Create, exp.Drop)):
        raise AdqlSecurityError(f"{node.key.upper()} is refused: only queries are accepted")
    names: dict[type, str] = {exp.Window: "window functions (OVER ...)",
                              exp.Mod: "the % operator", exp.Lateral: "LATERAL",
                              exp.Placeholder: "query parameters",
                              exp.Boolean: "TRUE/FALSE literals"}
    name = names.get(type(node), node.key.upper())
    raise AdqlUnsupportedError(f"{name} is not ADQL", construct=name,
                               hint="see the ADQL 2.1 Recommendation for what a query may use")


def check_output(tree: exp.Expr, allowed_calls: frozenset[str]) -> None:
    """The translated tree uses only the allow-listed nodes and the known DuckDB calls."""
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            if node.name.lower() not in allowed_calls:
                raise AdqlSecurityError(f"internal: translation produced {node.name}()")
        elif not isinstance(node, ALLOWED + OUTPUT_EXTRA):
            raise AdqlSecurityError(f"internal: translation produced {node.key}")


__all__ = ["FUNCTIONS", "check_nodes", "check_output", "check_statement", "check_tokens"]
