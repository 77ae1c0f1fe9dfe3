#include "coordinator/job_store.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace moec::coordinator {
namespace {

constexpr char kJobs[] = "jobs";
constexpr char kTasks[] = "tasks";
constexpr char kEvents[] = "events";

std::string JobKey(absl::string_view id) { return absl::StrCat("j/", id); }
std::string FingerprintKey(absl::string_view fp) { return absl::StrCat("f/", fp); }
std::string TaskPrefix(absl::string_view job) { return absl::StrCat("t/", job, "/"); }
std::string TaskKey(const v1::TaskRecord& t) {
  return absl::StrCat(TaskPrefix(t.job_id()), absl::StrFormat("%08d", t.order()));
}
std::string EventPrefix(absl::string_view job) { return absl::StrCat("e/", job, "/"); }
std::string EventKey(absl::string_view job, int64_t seq) {
  return absl::StrCat(EventPrefix(job), absl::StrFormat("%016d", seq));
}

template <typename Proto>
absl::StatusOr<Proto> Decode(absl::string_view bytes, absl::string_view what) {
  Proto p;
  if (!p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("job store: corrupt record ", what));
  }
  return p;
}

}  // namespace

std::vector<std::string> JobStoreColumnFamilies() { return {kJobs, kTasks, kEvents}; }

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(storage::KvStore* kv) {
  auto cfs = kv->ColumnFamilies();
  for (const auto& need : JobStoreColumnFamilies()) {
    if (std::find(cfs.begin(), cfs.end(), need) == cfs.end()) {
      return absl::InvalidArgumentError(absl::StrCat("job store needs column family '", need, "'"));
    }
  }
  return std::unique_ptr<JobStore>(new JobStore(kv));
}

void JobStore::AddEvents(v1::JobRecord& job, std::vector<v1::JobEvent>& events,
                         storage::KvWriteBatch* batch) const {
  if (job.next_event_seq() < 1) job.set_next_event_seq(1);
  for (auto& e : events) {
    e.set_seq(job.next_event_seq());
    job.set_next_event_seq(job.next_event_seq() + 1);
    batch->Put(kEvents, EventKey(job.job_id(), e.seq()), e.SerializeAsString());
  }
}

absl::Status JobStore::CreateJob(v1::JobRecord& job, absl::Span<const v1::TaskRecord> tasks,
                                 std::vector<v1::JobEvent> events) {
  if (kv_->Get(kJobs, JobKey(job.job_id())).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("job ", job.job_id(), " exists"));
  }
  if (!job.fingerprint().empty() && kv_->Get(kJobs, FingerprintKey(job.fingerprint())).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("a job with fingerprint ", job.fingerprint(),
                                                 " exists"));
  }
  storage::KvWriteBatch batch;
  for (const auto& t : tasks) batch.Put(kTasks, TaskKey(t), t.SerializeAsString());
  AddEvents(job, events, &batch);
  batch.Put(kJobs, JobKey(job.job_id()), job.SerializeAsString());
  if (!job.fingerprint().empty()) batch.Put(kJobs, FingerprintKey(job.fingerprint()), job.job_id());
  return kv_->Write(batch, storage::Durability::kSync);
}

absl::Status JobStore::PrepareCommit(v1::JobRecord& job,
                                     absl::Span<const v1::TaskRecord* const> tasks,
                                     std::vector<v1::JobEvent> events,
                                     storage::KvWriteBatch* batch) const {
  for (const v1::TaskRecord* t : tasks) {
    if (t->job_id() != job.job_id()) {
      return absl::InvalidArgumentError(
          absl::StrCat("task ", t->task_id(), " is not of job ", job.job_id()));
    }
    batch->Put(kTasks, TaskKey(*t), t->SerializeAsString());
  }
  AddEvents(job, events, batch);
  batch->Put(kJobs, JobKey(job.job_id()), job.SerializeAsString());
  return absl::OkStatus();
}

absl::Status JobStore::Commit(v1::JobRecord& job, absl::Span<const v1::TaskRecord* const> tasks,
                              std::vector<v1::JobEvent> events,
                              const storage::KvWriteBatch* extra,
                              storage::Durability durability) {
  storage::KvWriteBatch batch;
  MOEC_RETURN_IF_ERROR(PrepareCommit(job, tasks, std::move(events), &batch));
  if (extra != nullptr) batch.Append(*extra);
  return kv_->Write(batch, durability);
}

void JobStore::AddDoneFingerprint(const v1::TaskRecord& task, storage::KvWriteBatch* batch) {
  batch->Put(kTasks, absl::StrCat("d/", task.fingerprint()), task.task_id());
}

void JobStore::RemoveDoneFingerprint(absl::string_view fp, storage::KvWriteBatch* batch) {
  batch->Delete(kTasks, absl::StrCat("d/", fp));
}

absl::StatusOr<std::optional<std::string>> JobStore::FindDoneFingerprint(
    absl::string_view fp) const {
  absl::StatusOr<std::string> id = kv_->Get(kTasks, absl::StrCat("d/", fp));
  if (absl::IsNotFound(id.status())) return std::optional<std::string>();
  MOEC_RETURN_IF_ERROR(id.status());
  return std::optional<std::string>(*std::move(id));
}

absl::StatusOr<v1::JobRecord> JobStore::GetJob(absl::string_view job_id) const {
  absl::StatusOr<std::string> raw = kv_->Get(kJobs, JobKey(job_id));
  if (absl::IsNotFound(raw.status())) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  MOEC_RETURN_IF_ERROR(raw.status());
  return Decode<v1::JobRecord>(*raw, JobKey(job_id));
}

absl::StatusOr<std::optional<v1::JobRecord>> JobStore::FindByFingerprint(
    absl::string_view fp) const {
  absl::StatusOr<std::string> id = kv_->Get(kJobs, FingerprintKey(fp));
  if (absl::IsNotFound(id.status())) return std::optional<v1::JobRecord>();
  MOEC_RETURN_IF_ERROR(id.status());
  MOEC_ASSIGN_OR_RETURN(v1::JobRecord job, GetJob(*id));
  return std::optional<v1::JobRecord>(std::move(job));
}

absl::StatusOr<std::vector<v1::JobRecord>> JobStore::ListJobs() const {
  std::vector<v1::JobRecord> jobs;
  absl::Status decode;
  MOEC_RETURN_IF_ERROR(storage::ScanPrefix(*kv_, kJobs, "j/", [&](absl::string_view k,
                                                                  absl::string_view v) {
    absl::StatusOr<v1::JobRecord> j = Decode<v1::JobRecord>(v, k);
    if (!j.ok()) {
      decode = j.status();
      return false;
    }
    jobs.push_back(*std::move(j));
    return true;
  }));
  MOEC_RETURN_IF_ERROR(decode);
  return jobs;
}

absl::StatusOr<std::vector<v1::TaskRecord>> JobStore::ListTasks(absl::string_view job_id) const {
  std::vector<v1::TaskRecord> tasks;
  absl::Status decode;
  MOEC_RETURN_IF_ERROR(storage::ScanPrefix(*kv_, kTasks, TaskPrefix(job_id),
                                           [&](absl::string_view k, absl::string_view v) {
    absl::StatusOr<v1::TaskRecord> t = Decode<v1::TaskRecord>(v, k);
    if (!t.ok()) {
      decode = t.status();
      return false;
    }
    tasks.push_back(*std::move(t));
    return true;
  }));
  MOEC_RETURN_IF_ERROR(decode);
  return tasks;
}

absl::StatusOr<std::vector<v1::JobEvent>> JobStore::ReadEvents(absl::string_view job_id,
                                                               int64_t from_seq,
                                                               size_t limit) const {
  std::vector<v1::JobEvent> events;
  absl::Status decode;
  auto it = kv_->NewIterator(kEvents);
  const std::string prefix = EventPrefix(job_id);
  for (it->Seek(EventKey(job_id, std::max<int64_t>(from_seq, 0)));
       it->Valid() && absl::StartsWith(it->key(), prefix) && events.size() < limit; it->Next()) {
    absl::StatusOr<v1::JobEvent> e = Decode<v1::JobEvent>(it->value(), it->key());
    MOEC_RETURN_IF_ERROR(e.status());
    events.push_back(*std::move(e));
  }
  MOEC_RETURN_IF_ERROR(it->status());
  return events;
}

}  // namespace moec::coordinator
