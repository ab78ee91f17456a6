"""The Queue tab's handlers (tabs/queue_view.py) without a browser: Add to queue freezes a job and starts the
runner, bad settings queue nothing, the table shows the entries, an action on no entry says what to do, and the
GUI's start resumes a queue left with work."""
import time

import psutil

from core.queue import store
from core.queue.runner import resume_queue, runner_holder
from tabs.queue_view import COLUMNS, queue_job, queue_table


def wait_for(predicate, timeout=90.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_add_to_queue_runs_the_job_and_the_table_shows_it(small_dataset):
    refused = queue_job("scan", {"train_data_dir": []})
    assert refused.startswith("**Not queued: invalid settings**") and "train_data_dir" in refused
    assert store.read_queue().entries == []

    message = queue_job("scan", {"train_data_dir": [str(small_dataset)]})
    assert message.startswith("Queued as entry ") and str(small_dataset) in message
    assert wait_for(lambda: [e.status for e in store.read_queue().entries] == ["done"]), store.read_queue()
    table, ids, line, has_work, on_failure = queue_table()
    assert list(table.columns) == COLUMNS and ids == [store.read_queue().entries[0].id]
    assert table.iloc[0]["status"] == "done" and table.iloc[0]["run folder"].startswith("scan-")
    assert "**Queue idle** · 0 running · 0 waiting" in line and not has_work and on_failure == "skip"
    assert wait_for(lambda: runner_holder() is None)  # the runner ends when nothing is left


def test_the_gui_start_resumes_a_queue_with_work_only(small_dataset):
    assert resume_queue() is None  # empty: no runner
    store.pause()
    store.add("scan", {"train_data_dir": [str(small_dataset)]})
    assert resume_queue() is None  # paused: nothing starts
    store.resume()
    pid = resume_queue()
    assert pid and psutil.pid_exists(pid)
    assert wait_for(lambda: [e.status for e in store.read_queue().entries] == ["done"])


def test_actions_without_a_selected_entry_say_what_to_do():
    import gradio as gr

    from tabs.queue_view import QueueTab

    with gr.Blocks():
        tab = QueueTab()
    *shown, message = tab.act(lambda entry_id: store.remove(entry_id), None)
    assert message == "Select an entry in the table first."
    *shown, message = tab.act(lambda entry_id: store.remove(entry_id), "nope")
    assert message.startswith("**Not done:**") and "nope" in message
