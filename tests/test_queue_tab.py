"""The Queue tab's handlers (tabs/queue_view.py) without a browser: Add to queue freezes a job and starts the
runner, bad settings queue nothing, the table shows the entries, an action on no entry says what to do, and the
GUI's start resumes a queue left with work."""
import time

import psutil

from core.queue import store
from core.queue.runner import ensure_runner, resume_queue, runner_holder
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


def _page_with_forms():
    """A Blocks with the Dataset tab's scan section, the Training tab, the Runs tab and the Queue tab."""
    import gradio as gr

    from tabs import form, page_load, queue_view, runs, training
    from tabs.job_section import JobSection
    from tabs.queue_view import QueueTab

    form.FORMS.clear()
    queue_view.EDITABLE.clear()
    with gr.Blocks() as blocks:
        with gr.Tabs() as tabs:
            with gr.Tab("Dataset", id="dataset"):
                section = JobSection("scan", "Scan")
                section.wire(blocks)
            page = training.build(blocks)
            runs_page = runs.build(blocks)
            queue_tab = QueueTab()
    homes = {job: page_load.home_tab(target.button, tabs) for job, target in queue_view.EDITABLE.items()}
    return tabs, homes, section, page, runs_page, queue_tab


def test_edit_reopens_a_waiting_entry_in_its_form_which_then_saves_to_it(small_dataset, tmp_path):
    from tabs.queue_view import EDITABLE

    tabs, homes, section, page, runs_page, queue_tab = _page_with_forms()
    store.pause()  # the entries stay waiting
    scan = store.add("scan", {"train_data_dir": [str(small_dataset)]})
    train = store.add("train", {"train_data_dir": [str(small_dataset)], "output_dir": str(tmp_path / "out"),
                                "pretrained_model_name_or_path": str(tmp_path / "model.safetensors"),
                                "max_train_steps": 77})
    target = EDITABLE["scan"]
    shown = queue_tab.reopen(scan.id, tabs, homes)
    assert shown[tabs].selected == "dataset"
    assert shown[section.form.components["train_data_dir"]] == str(small_dataset)
    assert shown[target.editing] == scan.id and shown[target.cancel].visible is True
    assert shown[target.button].value == f"Save to entry {scan.id}"
    assert f"Editing **entry {scan.id} (scan)**" in shown[target.message]

    refused = target.save(scan.id, {"train_data_dir": []})
    assert refused[3].startswith("**Not saved: invalid settings**") and store.read_queue().find(scan.id).values == \
        scan.values
    other = tmp_path / "other"
    other.mkdir()
    *editing, message = target.save(scan.id, {"train_data_dir": [str(other)]})
    assert message.startswith(f"Saved to entry {scan.id} (scan)") and editing[0] == ""
    assert [e.id for e in store.read_queue().entries] == [scan.id, train.id]  # it kept its place
    assert store.read_queue().find(scan.id).values["train_data_dir"] == [str(other)]

    shown = queue_tab.reopen(train.id, tabs, homes)
    assert shown[tabs].selected == "training"
    assert shown[page.form.components["max_train_steps"]] == 77
    assert shown[EDITABLE["train"].editing] == train.id

    store.remove(scan.id)
    *editing, message = target.save(scan.id, {"train_data_dir": [str(other)]})
    assert message.startswith("**Not saved:**") and "no entry" in message and editing[0] == ""  # the edit ends


def test_edit_and_open_run_say_why_not(small_dataset, tmp_path):
    from core.models.catalogue import entries as catalogue_entries

    tabs, homes, section, page, runs_page, queue_tab = _page_with_forms()
    store.pause()
    download = store.add("download", {"catalogue": catalogue_entries()[0].id})
    assert "no form of its own" in queue_tab.reopen(download.id, tabs, homes)[queue_tab.message]
    assert queue_tab.reopen(None, tabs, homes)[queue_tab.message] == "Select an entry in the table first."
    assert "has no run folder yet" in queue_tab.open_entry_run(download.id, tabs, runs_page)[queue_tab.message]

    store.resume()
    scan = store.add("scan", {"train_data_dir": [str(small_dataset)]})
    ensure_runner()
    assert wait_for(lambda: store.read_queue().find(scan.id).status == "done")
    assert "only a waiting entry can be edited" in queue_tab.reopen(scan.id, tabs, homes)[queue_tab.message]
    opened = queue_tab.open_entry_run(scan.id, tabs, runs_page)
    run_dir = store.read_queue().find(scan.id).run_dir
    assert opened[tabs].selected == "runs" and opened[runs_page.selected] == run_dir
    assert "**scan** · done" in opened[runs_page.header] and run_dir in opened[runs_page.folders]


def test_add_to_queue_from_settings_that_cannot_be_made_queues_nothing():
    from core.config import ConfigError

    def broken():
        raise ConfigError("class_data_dir: choose the folder of class images")

    message = queue_job("class_images", broken)
    assert message.startswith("**Not queued: invalid settings**") and "class_data_dir" in message
    assert store.read_queue().entries == []
