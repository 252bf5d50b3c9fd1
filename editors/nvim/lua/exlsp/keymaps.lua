-- Insert-mode keys for the suggestion actions. A key whose action finds no suggestion does what
-- it would do unmapped, so mapping e.g. <Tab> to accept keeps <Tab> working.
local M = {}

M.actions = { "accept", "accept_word", "accept_line", "next", "prev", "dismiss" }

---@param keymaps table<string, string|false>
---@param client table the active completion client module (exlsp.inline or exlsp.builtin)
function M.setup(keymaps, client)
  local handlers = {
    accept = client.accept,
    accept_word = client.accept_word,
    accept_line = client.accept_line,
    next = function()
      return client.cycle(1)
    end,
    prev = function()
      return client.cycle(-1)
    end,
    dismiss = client.dismiss,
  }
  for _, action in ipairs(M.actions) do
    local lhs = keymaps[action]
    if lhs then
      vim.keymap.set("i", lhs, function()
        if not handlers[action]() then
          vim.api.nvim_feedkeys(vim.keycode(lhs), "n", false)
        end
      end, { desc = "exlsp: " .. action:gsub("_", " ") })
    end
  end
end

return M
