#include "proto/factor_stream.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/status_payloads.h"
#include "proto/rpc_status.h"

namespace moec {

// Largest data piece of a GetFactor stream.
constexpr size_t kGetPieceBytes = 1 << 20;

void FillFactorStat(const std::string& key, const storage::FactorInfo& info, v1::FactorStat* out) {
  out->set_key(key);
  out->set_dtype(std::string(storage::DTypeName(info.dtype)));
  for (int64_t d : info.shape) out->add_shape(d);
  out->set_byte_size(info.byte_size);
  out->set_crc32c(info.crc32c);
  out->set_held(info.held());
  for (const std::string& id : info.holders) out->add_holder_store_ids(id);
}

grpc::Status WriteFactorStream(const storage::FactorStore& store, const std::string& key,
                               const storage::FactorInfo& info, const v1::GetFactorResponse& head,
                               grpc::ServerWriterInterface<v1::GetFactorResponse>* writer) {
  if (!writer->Write(head)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  if (info.held()) return grpc::Status::OK;
  std::string buf;
  for (size_t i = 0; i < info.num_chunks(); ++i) {
    buf.resize(info.ChunkBytes(i));
    absl::Status s = store.ReadChunkInto(
        key, info, i, absl::MakeSpan(reinterpret_cast<uint8_t*>(buf.data()), buf.size()));
    if (!s.ok()) return ToGrpcStatus(s);
    // Store chunks are up to 16 MiB: each goes out in pieces.
    for (size_t off = 0; off < buf.size(); off += kGetPieceBytes) {
      v1::GetFactorResponse part;
      part.set_data(buf.data() + off, std::min(kGetPieceBytes, buf.size() - off));
      if (!writer->Write(part)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
  }
  return grpc::Status::OK;
}

absl::StatusOr<storage::Factor> ReadFactorStream(
    grpc::ClientReaderInterface<v1::GetFactorResponse>* reader, const std::string& key,
    v1::FactorStat* stat) {
  v1::GetFactorResponse part;
  storage::Factor f;
  bool have_stat = false;
  while (reader->Read(&part)) {
    if (part.has_stat()) {
      *stat = part.stat();
      std::optional<storage::DType> dtype = storage::ParseDType(stat->dtype());
      if (!dtype) return absl::DataLossError(absl::StrCat("factor '", key, "': unknown dtype"));
      f.info.dtype = *dtype;
      f.info.shape.assign(stat->shape().begin(), stat->shape().end());
      f.info.byte_size = stat->byte_size();
      f.info.crc32c = stat->crc32c();
      f.info.holders.assign(stat->holder_store_ids().begin(), stat->holder_store_ids().end());
      if (stat->held() && f.info.holders.empty()) f.info.holders.push_back("?");  // still held
      if (!stat->held()) f.data.reserve(f.info.byte_size);
      have_stat = true;
    } else {
      f.data += part.data();
    }
  }
  absl::Status s = FromGrpcStatus(reader->Finish());
  const bool held = have_stat && stat->held();
  if (s.ok() && (!have_stat || (!held && f.data.size() != f.info.byte_size))) {
    s = absl::DataLossError(absl::StrCat("factor '", key, "': incomplete stream"));
  }
  if (s.ok() && !held && crc32c::Value(f.data) != f.info.crc32c) {
    s = absl::DataLossError(absl::StrCat("factor '", key, "': CRC32C mismatch in transit"));
  }
  // The key of a corrupt factor travels with the error (the payload does not cross gRPC).
  if (absl::IsDataLoss(s)) return WithFactorKey(s, key);
  if (!s.ok()) return s;
  return f;
}

}  // namespace moec
