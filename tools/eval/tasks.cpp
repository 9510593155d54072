// Task builders: passkey retrieval prompts and multiple-choice items in the layouts of
// lm-evaluation-harness (PIQA, OpenBookQA, COPA, RTE).
#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "eval.h"
#include "util/json.h"

namespace hgeval {

using hybridgen::Error;

std::string read_text_file(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the file (" + flag + ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- Passkey --------------------------------------------------------------------------------

std::vector<std::string> filler_sentences(const std::string& path) {
  if (path.empty())  // the filler of the passkey tests of Landmark Attention and LongLoRA
    return {"The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
            "There and back again."};
  const std::string text = read_text_file(path, "--filler");
  // Sentences: split after . ! ? followed by white space; white space runs become one space so
  // that the units join cleanly.
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    if (c == ' ' && (cur.empty() || cur.back() == ' ')) continue;
    cur += c;
    const bool end =
        (c == '.' || c == '!' || c == '?') &&
        (i + 1 == text.size() || std::isspace(static_cast<unsigned char>(text[i + 1])));
    if (end) {
      out.push_back(cur);
      cur.clear();
    }
  }
  while (!cur.empty() && cur.back() == ' ') cur.pop_back();
  if (!cur.empty()) out.push_back(cur);
  if (out.empty()) throw Error(path + ": the filler text is empty (--filler)");
  return out;
}

PasskeyPrompt make_passkey_prompt(const hybridgen::Engine& e,
                                  const std::vector<std::string>& filler, int length, double depth,
                                  std::mt19937_64& rng) {
  PasskeyPrompt p;
  p.depth = depth;
  p.key = std::to_string(10000 + rng() % 90000);
  const std::string header =
      "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
      "it. I will quiz you about the important information there.";
  const std::string needle = " The pass key is " + p.key + ". Remember it.";
  const std::string question = "\n\nWhat is the pass key? The pass key is";
  auto tok = [&](const std::string& s, bool first) { return e.tokenize(s, first, false); };
  const std::vector<int32_t> head = tok(header, true), nd = tok(needle, false),
                             q = tok(question, false);
  // The answer's tokens as lm-evaluation-harness splits a continuation: tokenize question+answer
  // and keep what follows the question's own tokens.
  std::vector<int32_t> qa = tok(question + " " + p.key, false);
  if (qa.size() <= q.size() || !std::equal(q.begin(), q.end(), qa.begin()))
    throw Error("passkey: the tokenizer merges the question with the answer; cannot split them");
  std::vector<int32_t> answer(qa.begin() + q.size(), qa.end());
  // Tokenizers that split digits (SmolLM2, Llama) give the space before the key a token of its
  // own; a model would rather continue "is" with " a", so that space belongs to the prompt and
  // only the key's digits are checked.
  while (answer.size() > 1 &&
         e.detokenize(std::span(answer).first(1)).find_first_not_of(" ") == std::string::npos)
    answer.erase(answer.begin());

  // Filler sentences (cycled) until the prompt reaches `length` tokens.
  const int fixed = static_cast<int>(head.size() + nd.size() + qa.size());
  std::vector<std::vector<int32_t>> units;
  int n_filler = 0;
  for (size_t i = 0; fixed + n_filler < length; ++i) {
    units.push_back(tok(" " + filler[i % filler.size()], false));
    n_filler += static_cast<int>(units.back().size());
  }
  // The needle goes after the unit where the filler reaches depth * its length.
  const int target = static_cast<int>(depth * n_filler + 0.5);
  size_t split = 0;
  for (int acc = 0; split < units.size() && acc + int(units[split].size()) <= target; ++split)
    acc += static_cast<int>(units[split].size());

  p.tokens = head;
  for (size_t i = 0; i < units.size(); ++i) {
    if (i == split) {
      p.needle_token = static_cast<int>(p.tokens.size());
      p.tokens.insert(p.tokens.end(), nd.begin(), nd.end());
    }
    p.tokens.insert(p.tokens.end(), units[i].begin(), units[i].end());
  }
  if (split == units.size()) {
    p.needle_token = static_cast<int>(p.tokens.size());
    p.tokens.insert(p.tokens.end(), nd.begin(), nd.end());
  }
  p.n_context = static_cast<int>(p.tokens.size());
  p.tokens.insert(p.tokens.end(), qa.begin(), qa.end());
  p.n_answer = static_cast<int>(answer.size());
  return p;
}

// ---- Multiple choice ------------------------------------------------------------------------

namespace {

std::string where(const std::string& path, int line) { return path + ":" + std::to_string(line); }

const std::string& str_field(const Json& j, const char* field, const std::string& at,
                             const char* layout) {
  if (!j.contains(field) || !j[field].is_string())
    throw Error(at + ": field \"" + field + "\" is missing or not a string (" + layout + ")");
  return j[field].get_ref<const std::string&>();
}

int int_label(const Json& j, const char* field, int n_choices, const std::string& at,
              const char* layout) {
  if (!j.contains(field) || !j[field].is_number_integer())
    throw Error(at + ": field \"" + field + "\" is missing or not an integer (" + layout + ")");
  const int64_t v = j[field].get<int64_t>();
  if (v < 0 || v >= n_choices)
    throw Error(at + ": field \"" + field + "\" is " + std::to_string(v) + ", not in [0, " +
                std::to_string(n_choices - 1) + "] (" + layout + ")");
  return static_cast<int>(v);
}

// COPA's choices continue the premise mid-sentence: first letter lower-cased.
std::string lower_first(std::string s) {
  if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z') s[0] = static_cast<char>(s[0] - 'A' + 'a');
  return s;
}

std::string detect_task(const Json& j) {
  if (j.contains("goal")) return "piqa";
  if (j.contains("question_stem")) return "openbookqa";
  if (j.contains("choice1")) return "copa";
  if (j.contains("sentence1") || j.contains("hypothesis")) return "rte";
  return "";
}

// The layouts, as the harness's task YAMLs turn a document into text, choices and a label.
McItem parse_item(const Json& j, const std::string& task, const std::string& at) {
  McItem it;
  if (task == "piqa") {
    const char* layout = "PIQA layout: goal, sol1, sol2, label";
    it.text = "Question: " + str_field(j, "goal", at, layout) + "\nAnswer:";
    it.choices = {str_field(j, "sol1", at, layout), str_field(j, "sol2", at, layout)};
    it.label = int_label(j, "label", 2, at, layout);
  } else if (task == "openbookqa") {
    const char* layout =
        "OpenBookQA layout: question_stem, choices {text: [...], label: [...]}, answerKey";
    it.text = str_field(j, "question_stem", at, layout);
    if (!j.contains("choices") || !j["choices"].is_object())
      throw Error(at + ": field \"choices\" is missing or not an object (" + layout + ")");
    const Json& ch = j["choices"];
    if (!ch.contains("text") || !ch["text"].is_array() || ch["text"].empty() ||
        !ch.contains("label") || !ch["label"].is_array() || ch["label"].size() != ch["text"].size())
      throw Error(at + ": field \"choices\" needs arrays \"text\" and \"label\" of one length (" +
                  layout + ")");
    for (const Json& t : ch["text"]) {
      if (!t.is_string()) throw Error(at + ": field \"choices.text\" holds a non-string");
      it.choices.push_back(t.get<std::string>());
    }
    std::string key = str_field(j, "answerKey", at, layout);
    key.erase(0, key.find_first_not_of(' '));
    it.label = -1;
    for (size_t i = 0; i < ch["label"].size(); ++i)
      if (ch["label"][i].is_string() && ch["label"][i].get<std::string>() == key)
        it.label = static_cast<int>(i);
    if (it.label < 0)
      throw Error(at + ": field \"answerKey\" '" + key + "' is not one of \"choices.label\"");
  } else if (task == "copa") {
    const char* layout = "COPA layout: premise, choice1, choice2, question (cause|effect), label";
    std::string premise = str_field(j, "premise", at, layout);
    const std::string& q = str_field(j, "question", at, layout);
    if (q != "cause" && q != "effect")
      throw Error(at + ": field \"question\" is '" + q + "', not cause or effect");
    while (!premise.empty() && std::isspace(static_cast<unsigned char>(premise.back())))
      premise.pop_back();
    if (!premise.empty()) premise.pop_back();  // the harness drops the final period
    it.text = premise + (q == "cause" ? " because" : " therefore");
    it.choices = {lower_first(str_field(j, "choice1", at, layout)),
                  lower_first(str_field(j, "choice2", at, layout))};
    it.label = int_label(j, "label", 2, at, layout);
  } else if (task == "rte") {
    const char* layout =
        "RTE layout: sentence1, sentence2 (GLUE) or premise, hypothesis (SuperGLUE), label "
        "(0 = entailment)";
    const bool glue = j.contains("sentence1");
    const std::string& a = str_field(j, glue ? "sentence1" : "premise", at, layout);
    const std::string& b = str_field(j, glue ? "sentence2" : "hypothesis", at, layout);
    it.text = a + "\nQuestion: " + b + " True or False?\nAnswer:";
    it.choices = {"True", "False"};
    if (j.contains("label") && j["label"].is_string()) {  // some exports name the class
      const std::string& l = j["label"].get_ref<const std::string&>();
      if (l != "entailment" && l != "not_entailment")
        throw Error(at + ": field \"label\" is '" + l + "', not entailment or not_entailment");
      it.label = l == "entailment" ? 0 : 1;
    } else {
      it.label = int_label(j, "label", 2, at, layout);
    }
  } else {
    throw Error("unknown task '" + task + "' (the --task flag: auto, piqa, openbookqa, copa, rte)");
  }
  return it;
}

}  // namespace

std::vector<McItem> read_mc_jsonl(const std::string& path, std::string& task) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the multiple-choice file (--data)");
  std::vector<McItem> items;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines
    const std::string at = where(path, line_no);
    const nlohmann::json parsed = hybridgen::parse_json(line, at, true);
    const Json j = parsed;
    if (!j.is_object()) throw Error(at + ": not a JSON object");
    if (task == "auto") {
      task = detect_task(j);
      if (task.empty())
        throw Error(at +
                    ": cannot tell the layout from the fields (give --task piqa, openbookqa, "
                    "copa or rte)");
    }
    McItem it = parse_item(j, task, at);
    it.line = line_no;
    items.push_back(std::move(it));
  }
  if (items.empty()) throw Error(path + ": no items (--data)");
  return items;
}

std::string mc_context(const std::vector<McItem>& shots, const McItem& item) {
  // ConfigurableTask.fewshot_context: target_delimiter " ", fewshot_delimiter "\n\n".
  std::string ctx;
  for (const McItem& s : shots) ctx += s.text + " " + s.choices[s.label] + "\n\n";
  return ctx + item.text;
}

}  // namespace hgeval
