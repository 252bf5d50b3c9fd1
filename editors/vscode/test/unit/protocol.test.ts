import * as assert from "node:assert/strict";
import { ChatTranscript } from "../../src/chatTranscript";
import { chatAnswerText, classifyProgress, pickAction } from "../../src/protocol";

describe("server protocol readers", () => {
  it("tells chat and model-loading progress from others by title", () => {
    assert.equal(classifyProgress("exlsp chat"), "chat");
    assert.equal(classifyProgress("exlsp: loading model"), "loading");
    assert.equal(classifyProgress("Indexing"), "other");
    assert.equal(classifyProgress(undefined), "other");
  });

  it("reads the chat answer from { text } or a bare string", () => {
    assert.equal(chatAnswerText({ text: "42" }), "42");
    assert.equal(chatAnswerText("42"), "42");
    assert.equal(chatAnswerText(null), undefined);
  });

  it("picks the selection action by the server's data.action, else by an exlsp kind", () => {
    const offered = [
      { title: "exlsp: Explain this code", kind: "refactor", data: { action: "explain" } },
      { title: "exlsp: Add docstring", kind: "refactor.rewrite", data: { action: "docstring" } },
      { title: "Write tests", kind: "refactor.exlsp.tests" },
    ];
    assert.equal(pickAction(offered, "docstring")?.title, "exlsp: Add docstring");
    assert.equal(pickAction(offered, "tests")?.title, "Write tests");
    assert.equal(pickAction(offered.slice(0, 1), "tests"), undefined);
  });
});

describe("ChatTranscript", () => {
  it("streams pieces with a cursor, then the whole answer replaces them", () => {
    const transcript = new ChatTranscript();
    transcript.ask("what does fib do?");
    transcript.append("It ");
    transcript.append("recurses");
    assert.equal(transcript.text, "## You\n\nwhat does fib do?\n\n## exlsp\n\nIt recurses ▍");
    transcript.finish("It recurses twice.");
    assert.equal(transcript.busy, false);
    transcript.ask("and?");
    transcript.finish(undefined, "the model is not available");
    assert.equal(
      transcript.text,
      "## You\n\nwhat does fib do?\n\n## exlsp\n\nIt recurses twice.\n\n" +
        "## You\n\nand?\n\n## exlsp\n\n**error:** the model is not available",
    );
  });
});
