"""Code-edit prompts built from HumanEval solutions: the answer copies most of the given code.

Three edits per problem: rename the entry-point function, add type hints (annotations stripped
first) and add docstrings (docstrings stripped first). Copy-heavy prompts are where lookahead
(prompt-lookup) decoding pays off.
"""
from __future__ import annotations

import ast
from pathlib import Path

from bench.datasets.humaneval import load_problems
from bench.records import Prompt

EDITS = ("rename", "type-hints", "docstring")

_REPLY = "Reply with the complete rewritten code only, in one Python code block."


class _StripAnnotations(ast.NodeTransformer):
    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:  # a bare annotation declares nothing at run time
            return ast.Pass()
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)


class _StripDocstrings(ast.NodeTransformer):
    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node


def _strip(code: str, transformer: ast.NodeTransformer) -> str:
    tree = transformer.visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


def edit_prompt(task_id: str, entry_point: str, code: str, edit: str) -> Prompt:
    """One edit request over ``code`` (a complete HumanEval solution)."""
    if edit == "rename":
        new_name = f"{entry_point}_renamed"
        ask = (f"Rewrite the following Python code with the function `{entry_point}` renamed to "
               f"`{new_name}` everywhere. Keep everything else exactly as it is.")
    elif edit == "type-hints":
        code = _strip(code, _StripAnnotations())
        ask = ("Rewrite the following Python code with type hints added to every function parameter "
               "and return value. Keep everything else exactly as it is.")
    elif edit == "docstring":
        code = _strip(code, _StripDocstrings())
        ask = ("Rewrite the following Python code with a one-paragraph docstring added to every "
               "function. Keep everything else exactly as it is.")
    else:
        raise ValueError(f"unknown edit {edit!r}; expected one of {EDITS}")
    block = f"```python\n{code.rstrip()}\n```"
    # the prediction, as OpenAI's Predicted Outputs documents it for edits: the code as it was
    return Prompt(id=f"code-edit/{task_id}/{edit}", messages=(("user", f"{ask} {_REPLY}\n\n{block}"),), prediction=block)


def code_edit_prompts(path: Path | None = None) -> list[Prompt]:
    prompts = []
    for p in load_problems(path):
        code = p["prompt"] + p["canonical_solution"]
        prompts.extend(edit_prompt(p["task_id"], p["entry_point"], code, edit) for edit in EDITS)
    return prompts
