"""Regenerate the bad-input case files of tests/test_bad_inputs.py: run from the repo root with
``python tests/data/bad/make_input_cases.py [OUT]`` (default: this folder). It writes the files only; each folder's ``cases.yaml`` (the manifest:
stage, params wiring, and the line/record and field each error must name) is written by hand -- keep the two in step.

Folders: ``posts/`` (Stack Exchange Posts.xml, prepare), ``qa/`` (CSV/JSONL question sources, prepare),
``pairs/`` (human preference pair files, validate), ``batch/`` (OpenAI Batch API output files, teacher batch-import).
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent
BOM = b"\xef\xbb\xbf"


def put(path: str, data: bytes | str) -> None:
    p = OUT / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def jl(*recs) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs)


# --------------------------------------------------------------------------- Posts.xml (prepare, stackexchange)
DECL = '<?xml version="1.0" encoding="utf-8"?>\n'
Q1 = ('  <row Id="1" PostTypeId="1" AcceptedAnswerId="2" Score="5" Title="Why is the daytime sky blue?" '
      'Body="&lt;p&gt;Why blue and not violet?&lt;/p&gt;" Tags="&lt;optics&gt;" />\n')
A2 = ('  <row Id="2" PostTypeId="2" ParentId="1" Score="7" '
      'Body="&lt;p&gt;Air molecules scatter short wavelengths of sunlight most strongly.&lt;/p&gt;" />\n')


def posts(*rows: str, root: str = "posts", decl: str = DECL) -> str:
    return decl + f"<{root}>\n" + "".join(rows) + f"</{root}>\n"


def make_posts():
    ok_q = [("Why does ice float on water?", "Solid water is less dense than liquid water."),
            ("How do stars make their light?", "They fuse hydrogen into helium in their cores."),
            ("What causes the seasons on Earth?", "The tilt of the axis changes how directly sunlight arrives."),
            ("Why do plants need sunlight?", "Photosynthesis uses light energy to make sugar."),
            ("How do vaccines train the immune system?", "They show it a harmless part of a pathogen.")]
    rows = [Q1, A2]
    for i, (q, a) in enumerate(ok_q):
        qid, aid = 10 + 2 * i, 11 + 2 * i
        rows.append(f'  <row Id="{qid}" PostTypeId="1" Score="3" Title="{q}" Body="&lt;p&gt;{q}&lt;/p&gt;" />\n')
        rows.append(f'  <row Id="{aid}" PostTypeId="2" ParentId="{qid}" Score="4" Body="&lt;p&gt;{a}&lt;/p&gt;" />\n')
    # accepted: a repeated question Id (both copies dropped, with its answer), an answer whose ParentId is no
    # question of the file, an oversize body -- each dropped and counted in metrics/prepare.json
    rows += ['  <row Id="30" PostTypeId="1" Score="2" Title="Why is the sea salty?" Body="&lt;p&gt;x&lt;/p&gt;" />\n',
             '  <row Id="30" PostTypeId="1" Score="2" Title="Why is the sea blue?" Body="&lt;p&gt;y&lt;/p&gt;" />\n',
             '  <row Id="31" PostTypeId="2" ParentId="30" Score="5" Body="&lt;p&gt;Rivers carry ions.&lt;/p&gt;" />\n',
             '  <row Id="41" PostTypeId="2" ParentId="999" Score="5" Body="&lt;p&gt;An orphan.&lt;/p&gt;" />\n',
             f'  <row Id="50" PostTypeId="1" Score="2" Title="What is a huge question?" Body="{"a" * 100_001}" />\n',
             '  <row Id="51" PostTypeId="2" ParentId="50" Score="5" Body="&lt;p&gt;It is big.&lt;/p&gt;" />\n']
    put("posts/accepted_drops.xml", posts(*rows))

    put("posts/malformed_xml.xml", posts(Q1, A2, '  <row Id="3" PostTypeId="2" ParentId="1" Score="1 Body="x" />\n'))
    put("posts/truncated.xml", (posts(Q1, A2)).rsplit("</posts>", 1)[0])
    laughs = ('<!DOCTYPE posts [\n  <!ENTITY lol "lol">\n'
              + "".join(f'  <!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">\n' for i in range(1, 10))
              + "]>\n")
    put("posts/billion_laughs.xml", DECL + laughs + "<posts>\n"
        + '  <row Id="1" PostTypeId="1" Score="1" Title="&lol9;" Body="&lol9;" />\n</posts>\n')
    put("posts/external_entity.xml", DECL + '<!DOCTYPE posts [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n<posts>\n'
        + '  <row Id="1" PostTypeId="1" Score="1" Title="Why?" Body="&xxe;" />\n</posts>\n')
    put("posts/missing_id.xml", posts(Q1, A2, '  <row PostTypeId="2" ParentId="1" Score="1" Body="b" />\n'))
    put("posts/missing_post_type.xml", posts(Q1, '  <row Id="2" ParentId="1" Score="7" Body="b" />\n'))
    put("posts/missing_body.xml", posts(Q1, A2, '  <row Id="3" PostTypeId="1" Score="1" Title="Why is grass green?" />\n'))
    put("posts/score_not_integer.xml", posts(Q1, '  <row Id="2" PostTypeId="2" ParentId="1" Score="seven" Body="b" />\n'))
    put("posts/parent_missing.xml", posts(Q1, A2, '  <row Id="3" PostTypeId="2" Score="1" Body="b" />\n'))
    put("posts/post_type_not_integer.xml", posts(Q1, '  <row Id="2" PostTypeId="answer" ParentId="1" Score="1" Body="b" />\n'))
    put("posts/wrong_root.xml", DECL + "<users>\n"
        + '  <row Id="1" Reputation="101" DisplayName="Ada" />\n</users>\n')
    put("posts/empty.xml", b"")
    put("posts/binary_junk.xml", bytes(range(256)) * 4)
    put("posts/archive_7z.xml", b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(64))
    put("posts/not_utf8.xml", posts(Q1).encode("utf-8") .replace(b"Why blue", b"Pourquoi bleu \xe9"))
    put("posts/no_questions.xml", posts(A2))
    # through validate (human pairs from votes): the same reader, the same one-line errors
    put("posts/validate_score_not_integer.xml", posts(Q1, A2, '  <row Id="3" PostTypeId="2" ParentId="1" Score="n/a" '
                                                      'Body="&lt;p&gt;Because of the sea.&lt;/p&gt;" />\n'))


# --------------------------------------------------------------------------- Q/A sources (prepare, qa)
QA = [{"question": "Why is the daytime sky blue?", "answer": "Air scatters blue light most."},
      {"question": "Why does ice float on water?", "answer": "Ice is less dense than water."},
      {"question": "How do stars make their light?", "answer": "By fusing hydrogen into helium."}]


def make_qa():
    put("qa/bad_json_line.jsonl", jl(QA[0], '{"question": "Why does ice float?", "answer": }', QA[2]))
    put("qa/torn_last_line.jsonl", jl(QA[0], QA[1]) + '{"question": "How do stars make the')
    put("qa/missing_question.jsonl", jl(QA[0], {"answer": "An answer without its question."}, QA[2]))
    put("qa/empty_question.jsonl", jl({"question": "   ", "answer": "x"}, QA[1]))
    put("qa/bom_question_not_string.jsonl", BOM + jl(QA[0], "", {"question": 42, "answer": "x"}).encode())
    put("qa/answer_not_string.jsonl", jl(QA[0], {"question": "Why is grass green?", "answer": ["Chlorophyll"]}))
    put("qa/not_an_object.jsonl", jl(QA[0], '["Why is grass green?", "Chlorophyll"]'))
    put("qa/not_utf8.jsonl", jl(QA[0]).encode() + '{"question": "Pourquoi le ciel est bleu\xe9?"}\n'.encode("latin-1"))
    put("qa/bom_mid_file.jsonl", BOM + jl(QA[0], QA[1]).encode() + BOM + jl(QA[2]).encode())
    put("qa/eval_missing_question.jsonl", jl({"question": "Why is grass green?"}, {"question": ""}))
    put("qa/question_field_unknown.jsonl", jl(*QA))
    csv_head = "question,answer\r\n"
    put("qa/too_many_fields.csv", csv_head + "Why is the daytime sky blue?,Air scatters blue light.\r\n"
        + "Why does ice float, then?,Ice is less dense.\r\n")
    put("qa/too_few_fields.csv", csv_head + "Why is the daytime sky blue?,Air scatters blue light.\r\n"
        + "Why does ice float?\r\n")
    put("qa/column_unknown.csv", "Question,Answer\r\nWhy is the daytime sky blue?,Air scatters blue light.\r\n")
    put("qa/not_utf8.csv", (csv_head + "Why is the daytime sky blue?,Air scatters blue light.\r\n").encode()
        + "Pourquoi le ciel est bleu?,La diffusion de Rayleigh \xe9.\r\n".encode("latin-1"))
    put("qa/unclosed_quote.csv", csv_head + "Why is the daytime sky blue?,Air scatters blue light.\r\n"
        + '"Why does ice float?,Ice is less dense.\r\nHow do stars shine?,Fusion.\r\n')
    put("qa/quote_in_field.csv", csv_head + 'Why is the "daytime" sky blue?,Air scatters blue light.\r\n'
        + '"Why does ice" float?,Ice is less dense.\r\n')
    put("qa/nul_byte.csv", csv_head + "Why is the daytime sky blue?,Air scatters\x00 blue light.\r\n")
    put("qa/bom_empty_question.csv", BOM + (csv_head + "Why is the daytime sky blue?,Air scatters blue light.\r\n"
                                            + ",An answer without its question.\r\n").encode())
    put("qa/header_only.csv", csv_head)


# --------------------------------------------------------------------------- human pairs (validate, pairs)
def pair(q, c="Sunlight is scattered by air molecules, and short blue wavelengths scatter the most.",
         r="Because the sky reflects the ocean.", **kw):
    return {"question": q, "chosen": c, "rejected": r, **kw}


GOOD_PAIRS = [pair(q) for q in ("Why is the daytime sky blue?", "Why does the sky look blue?", "What colour is the sky?",
                                "Why is the sky not violet?", "Why is the noon sky blue?", "Why is the sky blue at all?")]


def make_pairs():
    put("pairs/setup/good.jsonl", jl(*GOOD_PAIRS))
    p0 = GOOD_PAIRS[0]
    put("pairs/chosen_equals_rejected.jsonl", jl(p0, pair("Why does ice float?", c="Ice is lighter.", r=" Ice  is lighter. ")))
    put("pairs/missing_rejected.jsonl", jl({"question": "Why does ice float?", "chosen": "Ice is less dense."}, p0))
    put("pairs/margin_not_number.jsonl", jl(p0, pair("Why does ice float?", margin="high")))
    put("pairs/margin_bool.jsonl", jl(p0, pair("Why does ice float?", margin=True)))
    put("pairs/margin_nan.jsonl", jl(p0, '{"question": "Why does ice float?", "chosen": "Less dense.", '
                                         '"rejected": "Magic.", "margin": NaN}'))
    put("pairs/strength_unknown.jsonl", jl(p0, pair("Why does ice float?", strength="Much better")))
    put("pairs/torn_last_line.jsonl", jl(p0, GOOD_PAIRS[1]) + '{"question": "Why does ice float?", "chosen": "Le')
    head = "question,chosen,rejected,strength,margin\r\n"
    put("pairs/strength_unsure.csv", head + "Why is the sky blue?,Rayleigh scattering.,It reflects the sea.,Better,\r\n"
        + "Why does ice float?,It is less dense.,Magic.,Unsure,\r\n")
    put("pairs/unclosed_quote.csv", head + "Why is the sky blue?,Rayleigh scattering.,The sea.,,\r\n"
        + '"Why does ice float?,It is less dense.,Magic.,,\r\n')
    put("pairs/not_utf8.csv", (head + "Why is the sky blue?,Rayleigh scattering.,The sea.,,\r\n").encode()
        + "Pourquoi la glace flotte?,Elle est moins dense.,La magie \xe9.,,\r\n".encode("latin-1"))


# --------------------------------------------------------------------------- Batch API output (teacher batch-import)
QUESTIONS = [{"id": "q1", "question": "Why is the daytime sky blue?", "domain": "physics"},
             {"id": "q2", "question": "Why does ice float on water?", "domain": "physics"}]
ANSWER = ("Sunlight contains every colour. When it passes through the air, molecules scatter the short blue "
          "wavelengths far more strongly than the long red ones, so blue light reaches our eyes from every part "
          "of the sky. Violet is scattered even more, but the Sun emits less of it and our eyes are less sensitive "
          "to it, so the sky looks blue.")


DELETE = object()


def out_line(cid, content=ANSWER, **over):
    body = {"id": f"chatcmpl-{cid}", "object": "chat.completion", "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 70, "total_tokens": 190}}
    rec = {"id": f"batch_req_{cid}", "custom_id": cid,
           "response": {"status_code": 200, "request_id": f"req_{cid}", "body": body}, "error": None}
    for path, value in over.items():  # {"response.body.choices": value}; DELETE removes the key
        keys = path.split(".")
        node = rec
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return rec


def make_batch():
    put("batch/setup/data/prepared/sft.jsonl", jl(*QUESTIONS))
    put("batch/setup/good.jsonl", jl(out_line("q2"), out_line("q1")))
    q1 = out_line("q1")
    put("batch/bad_json.jsonl", jl(q1, '{"custom_id": "q2", "response": {"status_code": 200, "body": {'))
    put("batch/torn_last_line.jsonl", jl(q1) + json.dumps(out_line("q2"))[:80])
    put("batch/missing_custom_id.jsonl", jl(q1, out_line("q2", custom_id=DELETE)))
    put("batch/custom_id_not_string.jsonl", jl(q1, out_line("q2", custom_id=2)))
    put("batch/unknown_custom_id.jsonl", jl(q1, out_line("q2"), out_line("q7")))
    put("batch/missing_answer.jsonl", jl(q1))
    put("batch/duplicate_custom_id.jsonl", jl(q1, out_line("q2"), out_line("q1")))
    put("batch/error_object.jsonl", jl(q1, {"id": "batch_req_q2", "custom_id": "q2", "response": None,
                                            "error": {"code": "rate_limit_exceeded", "message": "Too many requests"}}))
    put("batch/http_500.jsonl", jl(q1, out_line("q2", **{"response.status_code": 500,
                                                         "response.body": {"error": {"message": "server error"}}})))
    put("batch/missing_choices.jsonl", jl(q1, out_line("q2", **{"response.body.choices": DELETE})))
    put("batch/empty_choices.jsonl", jl(q1, out_line("q2", **{"response.body.choices": []})))
    put("batch/body_string.jsonl", jl(q1, out_line("q2", **{"response.body": "chat.completion"})))
    put("batch/content_not_string.jsonl", jl(q1, out_line("q2", **{"response.body.choices": [
        {"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": "x"}]}, "finish_reason": "stop"}]})))
    put("batch/usage_not_integer.jsonl", jl(q1, out_line("q2", **{"response.body.usage": {"prompt_tokens": "120",
                                                                                           "completion_tokens": 70}})))
    put("batch/not_utf8.jsonl", jl(q1).encode() + json.dumps(out_line("q2", content="caf\xe9"), ensure_ascii=False)
        .encode("latin-1") + b"\n")
    put("batch/bom_then_missing_response.jsonl", BOM + jl(q1, out_line("q2", response=DELETE)).encode())
    put("batch/empty.jsonl", b"")
    put("batch/input_file_not_output.jsonl", jl(
        {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-test"}}))


def main(out: Path = OUT) -> None:
    global OUT
    OUT = Path(out)
    make_posts()
    make_qa()
    make_pairs()
    make_batch()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
