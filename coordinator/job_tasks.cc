#include "coordinator/job_tasks.h"

namespace moec::coordinator {

void JobTasks::RebuildReady() {
  ready.clear();
  done_prefix = 0;  // re-derived from scratch at the next completion
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].state() == v1::TASK_READY) ready.insert(ready.end(), i);
  }
}

void JobTasks::NoteChanged(const std::vector<v1::TaskRecord*>& changed) {
  for (const v1::TaskRecord* t : changed) {
    const size_t i = PositionOf(*t);
    if (i >= tasks.size()) continue;  // not a task of this job
    if (i < done_prefix && t->state() != v1::TASK_DONE) done_prefix = i;  // moved back
    if (t->state() == v1::TASK_READY) {
      ready.insert(i);
    } else {
      ready.erase(i);
    }
  }
}

void JobTasks::Index() {
  index.clear();
  for (size_t i = 0; i < tasks.size(); ++i) index[tasks[i].task_id()] = i;
  dependents.assign(tasks.size(), {});
  by_stage.clear();
  for (size_t i = 0; i < tasks.size(); ++i) by_stage[tasks[i].stage_id()].push_back(i);
  for (size_t i = 0; i < tasks.size(); ++i) {
    for (const auto& d : tasks[i].deps()) {
      auto it = index.find(d);
      if (it != index.end()) dependents[it->second].push_back(i);
    }
  }
  RebuildReady();
}

v1::TaskRecord* JobTasks::Find(absl::string_view task_id) {
  auto it = index.find(std::string(task_id));
  return it == index.end() ? nullptr : &tasks[it->second];
}

const v1::TaskRecord* JobTasks::Find(absl::string_view task_id) const {
  auto it = index.find(std::string(task_id));
  return it == index.end() ? nullptr : &tasks[it->second];
}

v1::JobEvent MakeEvent(v1::EventKind kind, absl::string_view task_id, absl::string_view message,
                       int64_t time_ms) {
  v1::JobEvent e;
  e.set_time_ms(time_ms);
  e.set_kind(kind);
  e.set_task_id(std::string(task_id));
  e.set_message(std::string(message));
  return e;
}

}  // namespace moec::coordinator
