#include "model/config/tensor_names.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace moec::model {
namespace {

std::string LayerPrefix(int layer) { return absl::StrCat("model.layers.", layer, "."); }

// The MoE / MLP module of a layer: Mixtral's block_sparse_moe, everyone else's mlp.
std::string MoePrefix(const ModelConfig& c, int layer) {
  return absl::StrCat(LayerPrefix(layer),
                      c.arch == Architecture::kMixtral ? "block_sparse_moe." : "mlp.");
}

absl::string_view ProjName(const ModelConfig& c, ExpertProj which) {
  if (c.arch == Architecture::kMixtral) {
    switch (which) {
      case ExpertProj::kGate:
        return "w1";
      case ExpertProj::kUp:
        return "w3";
      case ExpertProj::kDown:
        return "w2";
    }
  }
  switch (which) {
    case ExpertProj::kGate:
      return "gate_proj";
    case ExpertProj::kUp:
      return "up_proj";
    case ExpertProj::kDown:
      return "down_proj";
  }
  return "";
}

// gate, up, down of a SwiGLU MLP of width `width` whose names start with `prefix`.
void AddSwiGlu(const ModelConfig& c, const std::string& prefix, int64_t width, TensorRole role,
               int expert, std::vector<TensorSpec>* out) {
  const int64_t h = c.hidden_size;
  for (ExpertProj p : {ExpertProj::kGate, ExpertProj::kUp, ExpertProj::kDown}) {
    std::vector<int64_t> shape =
        p == ExpertProj::kDown ? std::vector<int64_t>{h, width} : std::vector<int64_t>{width, h};
    out->push_back(TensorSpec{absl::StrCat(prefix, ProjName(c, p), ".weight"), std::move(shape),
                              role, expert});
  }
}

std::vector<std::string> Names(const std::vector<TensorSpec>& specs) {
  std::vector<std::string> names;
  names.reserve(specs.size());
  for (const TensorSpec& s : specs) names.push_back(s.name);
  return names;
}

}  // namespace

int64_t TensorSpec::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string EmbeddingTensorName() { return "model.embed_tokens.weight"; }

std::string FinalNormTensorName() { return "model.norm.weight"; }

std::string LmHeadTensorName(const ModelConfig& config) {
  return config.tie_word_embeddings ? EmbeddingTensorName() : "lm_head.weight";
}

std::vector<TensorSpec> AttentionTensors(const ModelConfig& c, int layer) {
  const std::string p = absl::StrCat(LayerPrefix(layer), "self_attn.");
  const int64_t h = c.hidden_size;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  const TensorRole r = TensorRole::kAttention;
  std::vector<TensorSpec> out = {
      {p + "q_proj.weight", {q, h}, r},
      {p + "k_proj.weight", {kv, h}, r},
      {p + "v_proj.weight", {kv, h}, r},
      {p + "o_proj.weight", {h, q}, r},
  };
  if (c.qkv_bias) {
    out.push_back({p + "q_proj.bias", {q}, r});
    out.push_back({p + "k_proj.bias", {kv}, r});
    out.push_back({p + "v_proj.bias", {kv}, r});
  }
  if (c.o_bias) out.push_back({p + "o_proj.bias", {h}, r});
  if (c.qk_norm == QkNorm::kFullWidth) {
    out.push_back({p + "q_norm.weight", {q}, r});
    out.push_back({p + "k_norm.weight", {kv}, r});
  } else if (c.qk_norm == QkNorm::kPerHead) {
    out.push_back({p + "q_norm.weight", {c.head_dim}, r});
    out.push_back({p + "k_norm.weight", {c.head_dim}, r});
  }
  return out;
}

std::vector<std::string> AttentionTensorNames(const ModelConfig& config, int layer) {
  return Names(AttentionTensors(config, layer));
}

std::string RouterTensorName(const ModelConfig& config, int layer) {
  return absl::StrCat(MoePrefix(config, layer), "gate.weight");
}

std::string ExpertTensorName(const ModelConfig& config, int layer, int expert, ExpertProj which) {
  return absl::StrCat(MoePrefix(config, layer), "experts.", expert, ".", ProjName(config, which),
                      ".weight");
}

std::vector<TensorSpec> SharedExpertTensors(const ModelConfig& c, int layer) {
  std::vector<TensorSpec> out;
  const int64_t width = c.SharedExpertIntermediateSize();
  if (!c.IsMoeLayer(layer) || width == 0) return out;
  const std::string mlp = MoePrefix(c, layer);
  if (c.arch == Architecture::kDeepseek) {
    AddSwiGlu(c, mlp + "shared_experts.", width, TensorRole::kSharedExpert, -1, &out);
  } else {
    AddSwiGlu(c, mlp + "shared_expert.", width, TensorRole::kSharedExpert, -1, &out);
  }
  if (c.has_shared_expert_gate) {
    out.push_back({mlp + "shared_expert_gate.weight", {1, c.hidden_size}, TensorRole::kRouter});
  }
  return out;
}

std::vector<std::string> SharedExpertTensorNames(const ModelConfig& config, int layer) {
  return Names(SharedExpertTensors(config, layer));
}

std::vector<TensorSpec> LayerTensors(const ModelConfig& c, int layer) {
  const std::string p = LayerPrefix(layer);
  std::vector<TensorSpec> out = {
      {p + "input_layernorm.weight", {c.hidden_size}, TensorRole::kNorm}};
  for (TensorSpec& s : AttentionTensors(c, layer)) out.push_back(std::move(s));
  if (c.IsMoeDropped(layer)) return out;
  out.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}, TensorRole::kNorm});
  if (!c.IsMoeLayer(layer)) {
    AddSwiGlu(c, p + "mlp.", c.intermediate_size, TensorRole::kDenseMlp, -1, &out);
    return out;
  }
  const int n = c.NumRoutedExperts(layer);
  if (n > 0) {
    out.push_back({RouterTensorName(c, layer), {n, c.hidden_size}, TensorRole::kRouter});
  }
  for (int e = 0; e < n; ++e) {
    AddSwiGlu(c, absl::StrCat(MoePrefix(c, layer), "experts.", e, "."), c.moe_intermediate_size,
              TensorRole::kRoutedExpert, e, &out);
  }
  for (TensorSpec& s : SharedExpertTensors(c, layer)) out.push_back(std::move(s));
  return out;
}

std::vector<std::string> LayerTensorNames(const ModelConfig& config, int layer) {
  return Names(LayerTensors(config, layer));
}

std::vector<TensorSpec> ModelTensors(const ModelConfig& c) {
  std::vector<TensorSpec> out = {
      {EmbeddingTensorName(), {c.vocab_size, c.hidden_size}, TensorRole::kEmbedding}};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    for (TensorSpec& s : LayerTensors(c, l)) out.push_back(std::move(s));
  }
  out.push_back({FinalNormTensorName(), {c.hidden_size}, TensorRole::kNorm});
  if (!c.tie_word_embeddings) {
    out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, TensorRole::kLmHead});
  }
  return out;
}

}  // namespace moec::model
