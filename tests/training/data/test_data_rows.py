"""Dataset rows in the formats Hub datasets use (messages, ShareGPT through `columns`, query/answer, text) as
records; `from_hub` on save_to_disk directories, packaged builders with data_files, and streaming with a limit;
the YAML keys of a data source."""

from __future__ import annotations

import json

import datasets
import pytest

from training.config import ConfigError
from training.data.loaders import from_hub, load_jsonl, load_parquet
from training.data.records import EpisodeRecord, InteractionRecord, RecordError, TextRecord
from training.data.rows import row_records, rows_to_records
from training.stages.data_config import DataSource, load_sources

CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi, I'm Ada."},
    {"role": "assistant", "content": "Hello Ada!", "reasoning_content": "greet her"},
    {"role": "user", "content": "I like herons."},
    {"role": "user", "content": "Remember that."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "unanswered"},
]}
TURNS = [InteractionRecord("Hi, I'm Ada.", "Hello Ada!", "greet her"),
         InteractionRecord("I like herons.\nRemember that.", "Noted.")]


def test_messages_rows_give_turns_episodes_and_texts():
    assert row_records(CHAT, "interaction") == TURNS
    assert row_records(CHAT, "episode") == [EpisodeRecord(TURNS[0].query, TURNS[0].answer, (TURNS[1],))]
    assert row_records(CHAT, "text") == [TextRecord("Hi, I'm Ada. Hello Ada!"),
                                         TextRecord("I like herons.\nRemember that. Noted.")]
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert row_records(sharegpt, "interaction", {"messages": "conversations"}) == [InteractionRecord("q", "a")]
    assert row_records({"question": "q", "response": "a"}, "interaction",
                       {"query": "question", "answer": "response"}) == [InteractionRecord("q", "a")]
    assert row_records({"query": "q", "answer": "a"}, "text") == [TextRecord("q a")]


def test_bad_rows_name_the_row_and_the_key():
    with pytest.raises(RecordError, match=r"data: row 2: messages\[0\]: role 'tool' is not one of"):
        rows_to_records([CHAT, {"messages": [{"role": "tool", "content": "x"}]}], "interaction", where="data")
    with pytest.raises(RecordError, match="row 1: key 'messages' holds no user message answered"):
        rows_to_records([{"messages": [{"role": "user", "content": "x"}]}], "interaction", where="data")
    with pytest.raises(RecordError, match=r"row 1: columns: the row has no column\(s\) \['question'\]"):
        rows_to_records([{"q": "x"}], "interaction", where="data", columns={"query": "question"})


def test_a_limit_stops_reading_rows():
    read = []

    def rows():
        for i in range(100):
            read.append(i)
            yield {"query": f"q{i}", "answer": "a"}

    assert len(rows_to_records(rows(), "interaction", where="gen", limit=3)) == 3
    assert read == [0, 1, 2]


def test_jsonl_and_parquet_read_messages(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps({"query": "q", "answer": "a"}) + "\n")
    assert load_jsonl(path, "interaction") == [*TURNS, InteractionRecord("q", "a")]
    datasets.Dataset.from_list([{"question": "q", "response": "a"}]).to_parquet(str(tmp_path / "qa.parquet"))
    assert load_parquet(tmp_path / "qa.parquet", "interaction", columns={"query": "question", "answer": "response"}) \
        == [InteractionRecord("q", "a")]


def test_from_hub_reads_save_to_disk_directories_builders_and_streams(tmp_path):
    datasets.Dataset.from_list([CHAT] * 3).save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list([CHAT]),
                          "test": datasets.Dataset.from_list([{"messages": CHAT["messages"][:3]}])}
                         ).save_to_disk(str(tmp_path / "splits"))
    assert from_hub(str(tmp_path / "flat"), "interaction") == TURNS * 3
    assert from_hub(str(tmp_path / "splits"), "interaction", split="test") == TURNS[:1]
    with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['test', 'train'\]"):
        from_hub(str(tmp_path / "splits"), "interaction", split="validation")
    assert from_hub(str(tmp_path / "flat"), "episode", streaming=True, limit=2) == row_records(CHAT, "episode") * 2
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("".join(json.dumps({"q": f"q{i}", "a": "a"}) + "\n" for i in range(10)))
    records = from_hub("json", "interaction", data_files=str(jsonl), columns={"query": "q", "answer": "a"},
                       streaming=True, limit=4)
    assert records == [InteractionRecord(f"q{i}", "a") for i in range(4)]


def test_data_source_yaml_keys(tmp_path):
    datasets.Dataset.from_list([CHAT]).save_to_disk(str(tmp_path / "chats"))
    source = DataSource(kind="hub", name=str(tmp_path / "chats"), streaming=True, limit=1)
    assert load_sources([source], "interaction") == TURNS[:1]
    for key, value in (("subset", "en"), ("data_files", "x.jsonl"), ("streaming", True)):
        with pytest.raises(ConfigError, match=f"config key '{key}': only for kind 'hub'"):
            DataSource(kind="jsonl", path="x.jsonl", **{key: value})
    with pytest.raises(ConfigError, match="config key 'columns': only for kinds jsonl, parquet and hub"):
        DataSource(kind="chitchat", columns={"query": "q"})
