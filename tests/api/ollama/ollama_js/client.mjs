// The official ollama client for JavaScript against the server: list, chat, a stream
// and a chat with tools. Prints what it got (or its error) as one JSON line.
import { Ollama } from "ollama";

const env = process.env;
const ollama = new Ollama({
  host: env.OLLAMA_TEST_HOST,
  headers: env.OLLAMA_TEST_KEY ? { Authorization: `Bearer ${env.OLLAMA_TEST_KEY}` } : {},
});
const model = env.OLLAMA_TEST_MODEL;
const options = { num_predict: 16, temperature: 0 };
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    },
  },
};
try {
  const list = await ollama.list();
  const whole = await ollama.chat({
    model,
    messages: [{ role: "user", content: env.OLLAMA_TEST_PROMPT }],
    options,
  });
  const parts = [];
  for await (const part of await ollama.chat({
    model,
    messages: [{ role: "user", content: env.OLLAMA_TEST_PROMPT }],
    options,
    stream: true,
  })) {
    parts.push(part);
  }
  const tools = await ollama.chat({
    model,
    messages: [{ role: "user", content: env.OLLAMA_TEST_TOOL_PROMPT }],
    tools: [weather],
    options,
  });
  let missing = null;
  try {
    await ollama.chat({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] });
  } catch (error) {
    missing = { name: error.name, status: error.status_code, message: error.error };
  }
  console.log(
    JSON.stringify({
      models: list.models.map((m) => m.model),
      whole: whole.message.content,
      whole_done: whole.done_reason,
      eval_count: whole.eval_count,
      streamed: parts.map((p) => p.message.content).join(""),
      last_done: parts[parts.length - 1].done,
      tool_calls: tools.message.tool_calls ?? null,
      tools_content: tools.message.content,
      missing,
    }),
  );
} catch (error) {
  console.log(JSON.stringify({ error: `${error.name}: ${error.message}` }));
  process.exitCode = 1;
}
