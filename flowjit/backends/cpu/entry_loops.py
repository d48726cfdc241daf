"""An entry's loops over steps (a scan's `for t in range(T)`) as functions of their own.

The Python tier interprets an entry: a scan body's lines run once per step, each a few
microseconds (views, a kernel's dispatch with a dozen arrays, an allocation). For an
LSTM step that was about 2 ms of 47 (T = 50). Compiling the whole entry removes it but
costs seconds (it links every kernel); compiling only the loop costs a fraction of that,
since it calls the loop body's kernels alone.

So each loop at the top level of an entry becomes a function `<entry>_loop<k>` taking
what it reads from the entry and returning what the entry reads after it. The entry's
source defines them beside the entry: the Python tier runs them as Python until their
compiled versions are ready (backend.py), a compiled entry calls them compiled.

Found from the generated text with Python's own parser: the loop's parameters are the
names it reads (or may leave unassigned) that the entry set before it; its results,
the names it assigns that the entry reads after it. A loop whose result might not be
set before it (it would be undefined after zero steps) stays inline.
"""
import ast
from dataclasses import dataclass

NAME = "__ENTRY__"       # stands for the entry's name in its lines until it is named


@dataclass
class EntryLoop:
    suffix: str          # the function is named entry name + suffix
    params: list
    results: list
    lines: list          # the `for` statement and its body, as in the entry

    def source(self, entry_name, decorator=""):
        body = "".join("    " + line + "\n" for line in self.lines)
        ret = f"    return ({''.join(r + ', ' for r in self.results)})\n"
        return f"{decorator}def {entry_name}{self.suffix}({', '.join(self.params)}):\n{body}{ret}"

    def call(self, entry_name):
        """The entry's line calling it."""
        call = f"{entry_name}{self.suffix}({', '.join(self.params)})"
        return f"({''.join(r + ', ' for r in self.results)}) = {call}" if self.results else call


def _statements(lines):
    """Top-level statements of an entry body: [(first line, end line)] (an `if` with its
    `else`, a `for` with its body)."""
    tree = ast.parse("\n".join(lines))
    return [(st.lineno - 1, st.end_lineno) for st in tree.body]


def _names(lines):
    """(names read, names assigned) in some entry lines, in order of first appearance."""
    tree = ast.parse("\n".join(lines))
    read, wrote = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (wrote if isinstance(node.ctx, ast.Store) else read).setdefault(node.id, node.lineno)
    order = (lambda d: sorted(d, key=lambda n: (d[n], n)))
    return order(read), order(wrote)


def split_loops(params, lines):
    """(the entry's lines with each top-level loop replaced by a call, [EntryLoop])."""
    out, loops = [], []
    defined = set(params)          # names the entry has set so far
    for lo, hi in _statements(lines):
        block = lines[lo:hi]
        loop = None
        if lines[lo].startswith("for ") and lo + 1 < hi:
            loop = _as_function(block, defined, lines[hi:], f"_loop{len(loops)}")
        if loop is None:
            out.extend(block)
        else:
            loops.append(loop)
            out.append(loop.call(NAME))
        defined.update(_names(block)[1])
    return out, loops


def _as_function(block, defined, after, suffix):
    read, wrote = _names(block)
    read_after = set(_names(after)[0])
    results = [n for n in wrote if n in read_after]
    if any(n not in defined for n in results):
        return None
    params = [n for n in read if n in defined] + [n for n in results if n not in read]
    return EntryLoop(suffix, params, results, block)
