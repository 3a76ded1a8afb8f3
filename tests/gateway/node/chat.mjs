// The openai npm SDK against the gateway: one completion, one stream, one refusal.
// Prints one JSON object for tests/gateway/test_openai_node.py.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.AIIS_BASE_URL, apiKey: process.env.AIIS_TOKEN, maxRetries: 0 });
const messages = [{ role: "user", content: "Hello from Node" }];

const { data: completion, response } = await client.chat.completions
  .create({ model: "auto", messages })
  .withResponse();
const stream = await client.chat.completions.create({
  model: "auto",
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
let refused = null;
try {
  await client.chat.completions.create({ model: "auto", messages, n: 3 });
} catch (err) {
  refused = { status: err.status, param: err.param, name: err.constructor.name };
}
console.log(
  JSON.stringify({
    taskId: response.headers.get("x-aiis-task-id"),
    id: completion.id,
    content: completion.choices[0].message.content,
    streamed: text,
    usage,
    refused,
  }),
);
