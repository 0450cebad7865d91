"""Runs inside the sandbox, under the sandbox's own interpreter (stdlib only, Python >= 3.8).

It reads one job (a marshal-encoded dict of plain types) from stdin: resource limits, earlier cells to
replay silently, and the cell to run.
Limits are set here, after the interpreter has started and before any model code runs, with soft = hard
so the code cannot raise them again; inside the sandbox's user namespace RLIMIT_NPROC then counts only
this call's processes and threads.
"""

import _ast  # the C node classes; the `ast` module itself costs ~15 ms of start-up per call
import marshal  # not json: importing json costs ~20 ms per call
import os
import resource
import sys


class _Discard:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _set_limits(limits):
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _compile_cell(source):
    """Compile with the reference's convenience: a trailing bare expression (not a print call) is
    printed. The tree is edited in place so line numbers in tracebacks match what the model wrote."""
    tree = compile(source, "<string>", "exec", _ast.PyCF_ONLY_AST)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, _ast.Expr):
        value = last.value
        is_print = (isinstance(value, _ast.Call) and isinstance(value.func, _ast.Name)
                    and value.func.id == "print")
        if not is_print:
            loc = {k: getattr(last, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}
            func = _ast.Name(id="print", ctx=_ast.Load(), **loc)
            tree.body[-1] = _ast.Expr(value=_ast.Call(func=func, args=[value], keywords=[], **loc), **loc)
    return compile(tree, "<string>", "exec")


def _report(error, tb):
    """Print the traceback; `traceback` is imported only here, to keep start-up fast, so when the code
    has exhausted memory or file descriptors the import can fail: then the exception line still shows."""
    try:
        import traceback

        traceback.print_exception(type(error), error, tb)
    except BaseException:
        sys.stderr.write(f"{type(error).__name__}: {error}\n")


def main():
    job = marshal.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # noqa: SIM115 -- stays open for the cell: input() sees EOF
    _set_limits(job["limits"])
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    out, err = sys.stdout, sys.stderr
    for cell in job["history"]:
        sys.stdout = sys.stderr = _Discard()
        try:
            exec(_compile_cell(cell), namespace)
        except (Exception, SystemExit):
            pass  # a replayed cell that fails now only loses its own variables
        finally:
            sys.stdout, sys.stderr = out, err
    try:
        code = _compile_cell(job["code"])
    except SyntaxError as e:
        _report(e, None)
        sys.exit(1)
    try:
        exec(code, namespace)
    except SystemExit:
        raise
    except BaseException as e:
        _report(e, e.__traceback__.tb_next)  # without this driver's own frame
        sys.exit(1)


if __name__ == "__main__":
    main()
